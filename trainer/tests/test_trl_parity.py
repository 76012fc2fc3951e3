"""Our losses and metrics against TRL's own DPOTrainer code, on the same log-probabilities.

TRL's loss lives in `DPOTrainer._compute_loss`, which takes a model and a padded batch. We call
that method itself (not a re-implementation) on a trainer object carrying exactly the attributes
DPOTrainer.__init__ derives from a real `DPOConfig`, with a stand-in network that returns given
per-token log-probs in the fields TRL reads from its fused LM head (`log_probs`, zero outside the
completion, as TRL's labels=-100 masking makes them). `precompute_ref_log_probs=True` feeds the
reference log-probs through the batch, TRL's own path for that. Everything is float64 so the
1e-6 tolerance measures definitions, not rounding.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")
from accelerate import Accelerator  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from dpo_trainer.losses import LOSS_TYPES, METRIC_NAMES, metric_sums, preference_loss  # noqa: E402

PAIRS, WIDTH = 6, 14


class PerTokenLogProbs(torch.nn.Module):
    """The network's output as TRL consumes it with fused_lm_head=True."""

    def __init__(self, per_token_logps: torch.Tensor):
        super().__init__()
        self.per_token_logps = per_token_logps  # [2B, T-1], 0 outside completions

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache):  # noqa: ARG002
        assert fused_lm_head and labels.shape == input_ids.shape
        zeros = torch.zeros_like(self.per_token_logps)
        return SimpleNamespace(
            log_probs=self.per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )


def trl_trainer(tmp_path, model: torch.nn.Module, **dpo_args) -> DPOTrainer:
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, precompute_ref_log_probs=True, **dpo_args)
    trainer = object.__new__(DPOTrainer)
    # The attributes DPOTrainer.__init__ sets from its args ("Training arguments" block) and the
    # metric store; _compute_loss reads nothing else.
    trainer.args = args
    trainer.accelerator = Accelerator(cpu=True)
    trainer.model = model
    trainer.beta = args.beta
    trainer.precompute_ref_logps = args.precompute_ref_log_probs
    trainer.loss_types = args.loss_type
    trainer.loss_weights = args.loss_weights or [1.0] * len(args.loss_type)
    trainer.ld_alpha = args.ld_alpha
    trainer.f_divergence_type = args.f_divergence_type
    trainer.f_alpha_divergence_coef = args.f_alpha_divergence_coef
    trainer.label_smoothing = args.label_smoothing
    trainer.use_weighting = args.use_weighting
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    return trainer


def random_batch(seed: int) -> dict[str, torch.Tensor]:
    """[chosen; rejected] rows: prompt, completion, right padding -- what our collate builds."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * PAIRS
    prompt = torch.randint(2, 6, (PAIRS,), generator=g).repeat(2)
    completion = torch.randint(1, WIDTH - 6, (rows,), generator=g)
    positions = torch.arange(WIDTH)
    completion_mask = ((positions >= prompt[:, None]) & (positions < (prompt + completion)[:, None])).long()
    attention_mask = (positions < (prompt + completion)[:, None]).long()
    per_token = -torch.rand(rows, WIDTH - 1, generator=g, dtype=torch.float64) * 3 * completion_mask[:, 1:]
    return {
        "input_ids": torch.randint(0, 100, (rows, WIDTH), generator=g) * attention_mask,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "per_token": per_token,
        "ref_chosen_logps": per_token[:PAIRS].sum(1) + torch.randn(PAIRS, generator=g, dtype=torch.float64),
        "ref_rejected_logps": per_token[PAIRS:].sum(1) + torch.randn(PAIRS, generator=g, dtype=torch.float64),
    }


CASES = [
    ("sigmoid", 0.1, 0.0),
    ("sigmoid", 0.5, 0.0),
    ("ipo", 0.1, 0.0),
    ("ipo", 0.7, 0.0),
    ("hinge", 0.1, 0.0),
    ("hinge", 2.0, 0.0),
    ("robust", 0.1, 0.0),
    ("robust", 0.1, 0.1),
    ("robust", 0.5, 0.3),
]


def test_every_shipped_loss_type_is_covered():
    assert {case[0] for case in CASES} == set(LOSS_TYPES)


@pytest.mark.parametrize("loss_type,beta,label_smoothing", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_metrics_match_trl(tmp_path, loss_type, beta, label_smoothing, seed):
    batch = random_batch(seed)
    per_token = batch.pop("per_token")
    model = PerTokenLogProbs(per_token).train()
    trainer = trl_trainer(tmp_path, model, beta=beta, loss_type=[loss_type], label_smoothing=label_smoothing)
    trl_loss = DPOTrainer._compute_loss(trainer, model, batch, return_outputs=False)
    trl_metrics = {k: v[0] for k, v in trainer._metrics["train"].items()}

    # Ours: the same sums and completion lengths train.completion_logps computes (shifted mask).
    logps = per_token.sum(1)
    lengths = batch["completion_mask"][:, 1:].sum(1).to(torch.float64)
    out = preference_loss(
        logps[:PAIRS], logps[PAIRS:], batch["ref_chosen_logps"], batch["ref_rejected_logps"],
        beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
        chosen_lengths=lengths[:PAIRS], rejected_lengths=lengths[PAIRS:],
    )
    ours = {k: v / PAIRS for k, v in metric_sums(out, logps[:PAIRS], logps[PAIRS:]).items()}

    assert ours["loss"] == pytest.approx(trl_loss.item(), abs=1e-6)
    assert set(METRIC_NAMES) - {"loss"} <= set(trl_metrics), "metric names must be TRL's"
    for name in METRIC_NAMES:
        if name != "loss":
            assert ours[name] == pytest.approx(trl_metrics[name], abs=1e-6), name


def test_label_smoothing_outside_robust_is_refused():
    # TRL ignores label_smoothing for sigmoid/ipo/hinge; we refuse it instead of ignoring it.
    one = torch.zeros(1)
    with pytest.raises(ValueError, match="only defined for loss_type robust"):
        preference_loss(one, one, one, one, beta=0.1, loss_type="sigmoid", label_smoothing=0.1)

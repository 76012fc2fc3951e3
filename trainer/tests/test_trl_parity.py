"""Our losses and metrics against TRL's own DPOTrainer code, on the same log-probabilities.

TRL's loss lives in `DPOTrainer._compute_loss`, which takes a model and a padded batch. We call
that method itself (not a re-implementation) on a trainer object carrying exactly the attributes
DPOTrainer.__init__ derives from a real `DPOConfig`, with stand-in networks (policy and
reference) that return given per-token values in the fields TRL reads from its fused LM head
(`log_probs`, zero outside the completion, as TRL's labels=-100 masking makes them, and
`log_sum_sq_probs` for WPO). The per-token values come from random logits over a small
vocabulary. Everything is float64 so the 1e-6 tolerance measures definitions, not rounding.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

trl = pytest.importorskip("trl")
from accelerate import Accelerator  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from dpo_trainer.losses import (  # noqa: E402
    LOSS_TYPES,
    METRIC_NAMES,
    LossSettings,
    PairLogps,
    metric_sums,
    pair_losses,
    sequence_logps,
    wpo_weights,
)

PAIRS, WIDTH, VOCAB = 6, 14, 5


class PerTokenOutputs(torch.nn.Module):
    """The network's output as TRL consumes it with fused_lm_head=True."""

    is_gradient_checkpointing = False

    def __init__(self, per_token_logps: torch.Tensor, log_sum_sq_probs: torch.Tensor):
        super().__init__()
        self.per_token_logps = per_token_logps  # [2B, T-1], 0 outside completions
        self.log_sum_sq_probs = log_sum_sq_probs

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache):  # noqa: ARG002
        assert fused_lm_head and labels.shape == input_ids.shape
        zeros = torch.zeros_like(self.per_token_logps)
        return SimpleNamespace(
            log_probs=self.per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
            log_sum_sq_probs=self.log_sum_sq_probs,
        )


def trl_trainer(tmp_path, model: torch.nn.Module, ref_model: torch.nn.Module, **dpo_args) -> DPOTrainer:
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, **dpo_args)
    trainer = object.__new__(DPOTrainer)
    # The attributes DPOTrainer.__init__ sets from its args ("Training arguments" block) and the
    # metric store; _compute_loss reads nothing else.
    trainer.args = args
    trainer.accelerator = Accelerator(cpu=True)
    trainer.model = model
    trainer.ref_model = ref_model
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


def token_values(g: torch.Generator, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and log sum_v p(v)^2 from random logits, zero outside the completion."""
    logits = torch.randn(*targets.shape, VOCAB, generator=g, dtype=torch.float64) * 2
    logp = logits.log_softmax(-1)
    per_token = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask
    log_sum_sq = torch.logsumexp(2 * logp, -1) * mask
    return per_token, log_sum_sq


def random_batch(seed: int) -> dict[str, Any]:
    """[chosen; rejected] rows: prompt, completion, right padding -- what our collate builds."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * PAIRS
    prompt = torch.randint(2, 6, (PAIRS,), generator=g).repeat(2)
    completion = torch.randint(1, WIDTH - 6, (rows,), generator=g)
    positions = torch.arange(WIDTH)
    completion_mask = ((positions >= prompt[:, None]) & (positions < (prompt + completion)[:, None])).long()
    attention_mask = (positions < (prompt + completion)[:, None]).long()
    input_ids = torch.randint(0, VOCAB, (rows, WIDTH), generator=g) * attention_mask
    shifted = completion_mask[:, 1:].to(torch.float64)
    policy = token_values(g, input_ids[:, 1:], shifted)
    reference = token_values(g, input_ids[:, 1:], shifted)
    return {
        "batch": {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask},
        "policy": policy,
        "reference": reference,
        "mask": shifted,
    }


def trl_loss_and_metrics(tmp_path, data: dict[str, Any], **dpo_args) -> tuple[float, dict[str, float]]:
    model = PerTokenOutputs(*data["policy"]).train()
    ref_model = PerTokenOutputs(*data["reference"]).eval()
    trainer = trl_trainer(tmp_path, model, ref_model, **dpo_args)
    loss = DPOTrainer._compute_loss(trainer, model, dict(data["batch"]), return_outputs=False)
    return loss.item(), {k: v[0] for k, v in trainer._metrics["train"].items()}


def our_loss_and_metrics(data: dict[str, Any], settings: LossSettings) -> tuple[float, dict[str, float]]:
    """What train.pair_logps + optimizer_step compute, on the same per-token values."""
    per_token, log_sum_sq = data["policy"]
    mask = data["mask"]
    policy = sequence_logps(per_token, mask, settings.ld_alpha)
    ref = sequence_logps(data["reference"][0], mask, settings.ld_alpha).logps
    weights = wpo_weights(per_token, log_sum_sq, mask) if settings.use_weighting else None
    p = PairLogps.from_rows(policy, ref, weights)
    losses = pair_losses(p, settings)
    sums = metric_sums(p, losses, settings.beta)
    return losses.sum().item() / PAIRS, {k: v / PAIRS for k, v in sums.items()}


def dpo_args(settings: LossSettings) -> dict[str, Any]:
    return {
        "beta": settings.beta, "loss_type": list(settings.loss_types), "loss_weights": list(settings.loss_weights),
        "label_smoothing": settings.label_smoothing, "discopop_tau": settings.discopop_tau,
        "ld_alpha": settings.ld_alpha, "use_weighting": settings.use_weighting,
    }


def case(types: str | tuple[str, ...], weights: tuple[float, ...] | None = None, **kw: Any) -> LossSettings:
    types = (types,) if isinstance(types, str) else types
    return LossSettings(types, weights or (1.0,) * len(types), **kw)


SINGLE = [case(t, beta=beta) for t in LOSS_TYPES if t != "exo_pair" for beta in (0.1, 0.7)] + [
    case("exo_pair", beta=0.1, label_smoothing=1e-3),
    case("exo_pair", beta=0.5, label_smoothing=0.2),
    case("robust", beta=0.1, label_smoothing=0.1),
    case("robust", beta=0.5, label_smoothing=0.3),
    case("aot", beta=0.3, label_smoothing=0.2),
    case("aot_unpaired", beta=0.3, label_smoothing=0.2),
    case("discopop", beta=0.5, discopop_tau=0.5),
    case("discopop", beta=2.0, discopop_tau=0.01),
]
COMBINED = [
    case(("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0), beta=0.1),  # MPO
    case(("ipo", "sft"), (1.0, 0.5), beta=0.3),
    case(("aot", "sigmoid_norm", "apo_zero"), (0.3, 0.3, 0.4), beta=0.2, label_smoothing=0.05),
    case(("exo_pair", "nca_pair", "sppo_hard", "apo_down", "hinge"), beta=0.4, label_smoothing=0.01),
]
LD_ALPHA = [
    case("sigmoid", beta=0.1, ld_alpha=0.5),
    case("ipo", beta=0.5, ld_alpha=0.0),
    case(("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0), beta=0.1, ld_alpha=0.3),
    case("aot_unpaired", beta=0.2, ld_alpha=0.8),
]
WEIGHTED = [
    case("sigmoid", beta=0.1, use_weighting=True),
    case(("sigmoid", "bco_pair"), (0.8, 0.2), beta=0.3, use_weighting=True),
    case(("ipo", "robust"), beta=0.5, label_smoothing=0.1, use_weighting=True, ld_alpha=0.5),
    case("discopop", beta=0.5, use_weighting=True),
]
ALL = SINGLE + COMBINED + LD_ALPHA + WEIGHTED


def test_every_trl_loss_type_is_shipped_and_covered():
    trl_types = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert all(f"`'{t}'`" in trl_types for t in LOSS_TYPES)
    assert trl_types.count("`'") == len(LOSS_TYPES), "TRL lists a loss type we do not ship"
    assert {t for s in SINGLE for t in s.loss_types} == set(LOSS_TYPES)


@pytest.mark.parametrize("settings", ALL, ids=lambda s: f"{'+'.join(s.loss_types)}-b{s.beta}-ls{s.label_smoothing}"
                         f"-ld{s.ld_alpha}-w{int(s.use_weighting)}-tau{s.discopop_tau}")
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_metrics_match_trl(tmp_path, settings, seed):
    data = random_batch(seed)
    trl_loss, trl_metrics = trl_loss_and_metrics(tmp_path, data, **dpo_args(settings))
    loss, ours = our_loss_and_metrics(data, settings)
    assert loss == pytest.approx(trl_loss, abs=1e-6)
    assert set(METRIC_NAMES) - {"loss"} <= set(trl_metrics), "metric names must be TRL's"
    for name in METRIC_NAMES:
        if name != "loss":
            assert ours[name] == pytest.approx(trl_metrics[name], abs=1e-6), name


def test_weighting_changes_the_loss():
    # WPO is not a no-op on these inputs (so the weighted cases above test something).
    data = random_batch(0)
    plain, _ = our_loss_and_metrics(data, case("sigmoid"))
    weighted, _ = our_loss_and_metrics(data, case("sigmoid", use_weighting=True))
    assert abs(plain - weighted) > 1e-3


def test_trl_fails_on_sft_with_weighting(tmp_path):
    # Why config.py refuses use_weighting with sft: TRL 1.16 fails on it at the first step.
    with pytest.raises(RuntimeError, match="memory location"):
        trl_loss_and_metrics(tmp_path, random_batch(0), loss_type=["sft"], use_weighting=True)


def test_trl_config_rejects_mismatched_weights(tmp_path):
    with pytest.raises(ValueError, match="loss_weights"):
        DPOConfig(output_dir=str(tmp_path), report_to=[], loss_type=["sigmoid", "sft"], loss_weights=[1.0])


# ------------------------------------------------------------------------------------------
# End to end on the tiny model: our forward (modeling.completion_token_logps, the per-token
# values train.pair_logps derives its pairs from) against TRL's fused LM head and _compute_loss.


@pytest.fixture(scope="module")
def real_models(tiny_model_dir, demo_shards):
    from trl.trainer.utils import add_fused_lm_head

    from dpo_trainer.data import PixelCache, collate, load_shards
    from dpo_trainer.modeling import load_base_model

    ref = load_base_model(str(tiny_model_dir), torch.float32, torch.device("cpu"))
    policy = load_base_model(str(tiny_model_dir), torch.float32, torch.device("cpu"))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a policy that has moved away from the reference
        for p in policy.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")
    add_fused_lm_head(policy.model, outputs=outputs)
    add_fused_lm_head(ref.model, outputs=outputs)
    rows = load_shards([str(p) for p in demo_shards[0]]).rows(list(range(6)))
    batch = collate(rows, ref.spec.pad_token_id, PixelCache(ref.image_processor))
    return policy.model.eval(), ref.model.eval(), batch


def trl_inputs(batch) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "completion_mask": batch.completion_mask}
    if batch.pixel_values is not None:
        inputs["pixel_values"] = batch.pixel_values
    return inputs


def test_our_forward_gives_trls_fused_head_values(real_models):
    from dpo_trainer.modeling import completion_token_logps

    policy, _, batch = real_models
    inputs = trl_inputs(batch)
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    model_kwargs = {k: v for k, v in inputs.items() if k != "completion_mask"}
    with torch.no_grad():
        theirs = policy(**model_kwargs, labels=labels, fused_lm_head=True, use_cache=False)
        per_token, mask, log_sum_sq = completion_token_logps(policy, batch, sum_sq_probs=True)
    width = mask.shape[1]
    assert torch.allclose(per_token, theirs.log_probs[:, -width:] * mask, atol=1e-5)
    assert torch.allclose(log_sum_sq * mask, theirs.log_sum_sq_probs[:, -width:] * mask, atol=1e-5)
    assert (mask.sum(1) == batch.completion_mask[:, 1:].sum(1)).all()


@pytest.mark.parametrize("settings", [
    case(("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0), beta=0.1, ld_alpha=0.5),
    case(("ipo", "aot"), beta=0.3, use_weighting=False, label_smoothing=0.1),
    case(("sigmoid_norm", "nca_pair"), beta=0.2, use_weighting=True),
], ids=["mpo-ld", "ipo+aot", "wpo"])
def test_real_model_loss_matches_trl(tmp_path, real_models, settings):
    """TRL's _compute_loss with the real (fused-head) models against what train.pair_logps and
    pair_losses compute from our own forward pass."""
    from dpo_trainer.modeling import completion_token_logps

    policy, ref, batch = real_models
    trainer = trl_trainer(tmp_path, policy, ref, **dpo_args(settings))
    with torch.no_grad():
        trl_loss = DPOTrainer._compute_loss(trainer, policy, trl_inputs(batch), return_outputs=False).item()
        # eval(): no dropout in either forward; TRL then files its metrics under "eval".
        trl_metrics = {k: v[0] for k, v in trainer._metrics["eval"].items()}
        per_token, mask, log_sum_sq = completion_token_logps(policy, batch, sum_sq_probs=settings.use_weighting)
        ref_tokens, ref_mask, _ = completion_token_logps(ref, batch)
    p = PairLogps.from_rows(
        sequence_logps(per_token, mask, settings.ld_alpha),
        sequence_logps(ref_tokens, ref_mask, settings.ld_alpha).logps,
        wpo_weights(per_token, log_sum_sq, mask) if settings.use_weighting else None,
    )
    losses = pair_losses(p, settings)
    sums = metric_sums(p, losses, settings.beta)
    assert losses.mean().item() == pytest.approx(trl_loss, abs=1e-5)
    for name in METRIC_NAMES:
        if name != "loss":
            assert sums[name] / p.pairs() == pytest.approx(trl_metrics[name], abs=1e-4), name

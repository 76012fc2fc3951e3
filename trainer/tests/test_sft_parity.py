"""The sft objective against TRL's own SFTTrainer code on the same batch.

TRL's completion-only loss and its metrics live in `SFTTrainer.compute_loss`, which runs the model
with TRL's fused LM head (`add_fused_lm_head`, as SFTTrainer.__init__ installs it) on labels that
are -100 outside the completion. We call that method itself on a trainer object carrying the
attributes SFTTrainer.__init__ derives from a real `SFTConfig`, with the tiny LLaVA in float32, and
compare it with what train.accumulate_sft computes from our own forward pass
(modeling.completion_token_stats): the loss, mean_token_accuracy, entropy and num_tokens.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

trl = pytest.importorskip("trl")
from accelerate import Accelerator  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

from dpo_trainer.data import PixelCache, collate, load_shards  # noqa: E402
from dpo_trainer.modeling import completion_token_stats, load_base_model  # noqa: E402


def trl_trainer(tmp_path, model: torch.nn.Module) -> SFTTrainer:
    args = SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, assistant_only_loss=False, completion_only_loss=True)
    trainer = object.__new__(SFTTrainer)
    # What SFTTrainer.__init__ sets and compute_loss reads (the nll loss, no label smoothing, no
    # MoE aux loss, one process).
    trainer.args = args
    trainer.accelerator = Accelerator(cpu=True)
    trainer.model = model
    trainer.compute_loss_func = None
    trainer.label_smoother = None
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    return trainer


@pytest.fixture(scope="module")
def policy_and_batches(tiny_model_dir, demo_shards):
    loaded = load_base_model(str(tiny_model_dir), torch.float32, torch.device("cpu"))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # a model whose answers are not uniform
        for p in loaded.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    add_fused_lm_head(loaded.model, outputs=("log_probs", "entropy", "is_top1"))
    dataset = load_shards([str(p) for p in demo_shards[0]])
    pixels = PixelCache(loaded.image_processor)
    batches = [collate(dataset.rows(rows), loaded.spec.pad_token_id, pixels, chosen_only=True) for rows in ([0, 1, 2], [3, 4, 5, 6, 7])]
    return loaded.model, batches


@pytest.mark.parametrize("which", [0, 1])
def test_loss_and_metrics_match_sfttrainer(tmp_path, policy_and_batches, which):
    model, batches = policy_and_batches
    batch = batches[which]
    # train(): TRL counts num_tokens in train mode only; the tiny model has no dropout.
    model.train()
    trainer = trl_trainer(tmp_path, model)
    inputs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "pixel_values": batch.pixel_values,
        # SFTTrainer's collator: completion_mask 0 -> label -100 (completion_only_loss).
        "labels": batch.input_ids.masked_fill(batch.completion_mask == 0, -100),
    }
    with torch.no_grad():
        trl_loss = SFTTrainer.compute_loss(trainer, model, inputs).item()
        stats = completion_token_stats(model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    tokens = stats.mask.sum()
    assert (-stats.log_probs.sum() / tokens).item() == pytest.approx(trl_loss, abs=1e-6)
    assert (stats.is_top1.sum() / tokens).item() == pytest.approx(metrics["mean_token_accuracy"], abs=1e-6)
    assert (stats.entropy.sum() / tokens).item() == pytest.approx(metrics["entropy"], abs=1e-5)
    assert batch.tokens == metrics["num_tokens"]
    # The metrics are not trivially equal: the model is neither certain nor uniform.
    assert 0 < metrics["entropy"] < torch.log(torch.tensor(float(model.config.get_text_config().vocab_size))).item()


def test_micro_batches_of_a_step_give_sfttrainers_loss_on_the_whole_step(tmp_path, policy_and_batches, tiny_model_dir, demo_shards):
    """Our step loss over two micro-batches (each one's NLL sum / the step's token count) is TRL's
    loss on the step's eight rows as one batch: what makes OOM backoff give the same update. The
    mean of the micro-batch means, which plain gradient accumulation would give, is not."""
    model, (a, b) = policy_and_batches
    model.train()
    loaded = load_base_model(str(tiny_model_dir), torch.float32, torch.device("cpu"))  # for its processor
    rows = load_shards([str(p) for p in demo_shards[0]]).rows(list(range(8)))
    whole = collate(rows, loaded.spec.pad_token_id, PixelCache(loaded.image_processor), chosen_only=True)
    trainer = trl_trainer(tmp_path, model)
    inputs = {"input_ids": whole.input_ids, "attention_mask": whole.attention_mask, "pixel_values": whole.pixel_values,
              "labels": whole.input_ids.masked_fill(whole.completion_mask == 0, -100)}
    with torch.no_grad():
        trl_loss = SFTTrainer.compute_loss(trainer, model, inputs).item()
        sa, sb = completion_token_stats(model, a), completion_token_stats(model, b)
    step_tokens = sa.mask.sum() + sb.mask.sum()
    ours = (-sa.log_probs.sum() / step_tokens - sb.log_probs.sum() / step_tokens).item()
    mean_of_means = ((-sa.log_probs.sum() / sa.mask.sum() - sb.log_probs.sum() / sb.mask.sum()) / 2).item()
    assert ours == pytest.approx(trl_loss, abs=1e-6)
    assert abs(mean_of_means - trl_loss) > 1e-4

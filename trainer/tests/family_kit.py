"""What the per-family trainer tests share: shard rows made the way the Node stages make them
(image tokens expanded by the family's own processor, prompt and answers split as TRL's
maybe_apply_chat_template splits them), Parquet shards, and a small LoRA train config."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from demo_data import SHARD_SCHEMA, generate_pairs

# (width, height) of the thumbnails, cycled over the pairs: square, landscape, portrait, a strip.
SIZES = [(48, 48), (64, 40), (30, 60), (80, 16), (56, 56), (20, 44)]


def sized_jpeg(jpeg: bytes, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(out, format="JPEG", quality=90)
    return out.getvalue()


def texts(processor, question: str, answer: str) -> tuple[str, str]:
    """TRL's maybe_apply_chat_template split (what the Node format stage stores)."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    prompt = processor.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    whole = processor.apply_chat_template([user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}], tokenize=False)
    assert whole.startswith(prompt)
    return prompt, whole[len(prompt):]


def processor_rows(processor, n: int, seed: int, family: str, *, prompt_special_tokens: bool = True) -> list[dict]:
    """Shard rows as the Node stages make them: image tokens expanded by the processor itself.
    `prompt_special_tokens` False where the chat template writes bos itself (as TRL's collator
    then tokenizes)."""
    tokenizer = processor.tokenizer
    rows = []
    for i, pair in enumerate(generate_pairs(n, seed, family)):
        image = sized_jpeg(pair.image_jpeg, SIZES[i % len(SIZES)])
        prompt, chosen = texts(processor, pair.question, pair.chosen)
        _, rejected = texts(processor, pair.question, pair.rejected)
        prompt_ids = processor(images=[Image.open(io.BytesIO(image)).convert("RGB")], text=prompt, add_special_tokens=prompt_special_tokens)["input_ids"][0]
        answer = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]  # noqa: E731
        rows.append({
            "sample_id": pair.sample_id, "prompt_input_ids": [int(t) for t in prompt_ids],
            "chosen_input_ids": answer(chosen), "rejected_input_ids": answer(rejected), "image": image,
            # For TRL's collator: the same texts (the eos our tokenize stage appends, spelled out).
            "_trl": {"prompt": prompt, "chosen": chosen + tokenizer.eos_token, "rejected": rejected + tokenizer.eos_token},
        })
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    table = {name: [row[name] for row in rows] for name in SHARD_SCHEMA.names}
    pq.write_table(pa.table(table, schema=SHARD_SCHEMA), path)
    return path


def two_shards(folder: Path, rows: list[dict]) -> list[Path]:
    half = len(rows) // 2
    return [write_rows(folder / "train-000.parquet", rows[:half]), write_rows(folder / "train-001.parquet", rows[half:])]


def lora_train_config(model_dir: Path, shards: list[Path], output_dir: Path, **overrides) -> dict:
    """4 optimizer steps over 16 pairs (micro-batch 2 x 2), LoRA r=4 on all linear layers."""
    config = {
        "model_dir": str(model_dir), "train_shards": [str(p) for p in shards], "output_dir": str(output_dir),
        "seed": 3, "epochs": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
        "learning_rate": 0.005, "lr_scheduler_type": "cosine", "warmup_ratio": 0.25,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "checkpoint_every_steps": 2, "log_every_steps": 1, "dtype": "float32",
    }
    config.update(overrides)
    return config


@dataclass
class LossComparison:
    """Our DPO loss and TRL's on the same LoRA model and rows (see `compare_with_trl`)."""

    ours: float
    theirs: float
    batch: object  # our PreferenceBatch
    inputs: dict  # TRL's collated inputs
    policy_logps: object  # our policy's completion log-probs [2B]
    model: object  # the LoRA model both sides scored with


def lora_model(model_dir: Path):
    """The tiny model with LoRA whose B matrices are moved off zero (so policy != reference),
    in eval mode, and what load_base_model returned (spec, image processor)."""
    import torch

    from dpo_trainer.config import LoraSettings
    from dpo_trainer.modeling import attach_lora, load_base_model

    loaded = load_base_model(str(model_dir), torch.float32, torch.device("cpu"))
    torch.manual_seed(0)
    model = attach_lora(loaded.model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    return model, loaded


def compare_with_trl(model_dir: Path, processor, rows: list[dict], tmp_path: Path, beta: float = 0.1) -> LossComparison:
    """The sigmoid DPO loss by our collate + log-probs + loss, and by TRL's own vision collator and
    `DPOTrainer._compute_loss` (its fused LM head added, as its __init__ does), on one model with
    LoRA whose B matrices are moved off zero (so policy and reference differ); the reference is
    the disabled adapter on both sides."""
    from collections import defaultdict

    import torch
    from accelerate import Accelerator
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
    from trl.trainer.utils import add_fused_lm_head

    from dpo_trainer.data import PixelCache, collate
    from dpo_trainer.losses import LossSettings, PairLogps, SequenceLogps, pair_losses
    from dpo_trainer.modeling import completion_logps

    model, loaded = lora_model(model_dir)
    batch = collate(rows, loaded.spec.pad_token_id, PixelCache(loaded.image_processor, loaded.spec.image_token_id))
    with torch.no_grad():
        policy, lengths = completion_logps(model, batch)
        with model.disable_adapter():
            ref, _ = completion_logps(model, batch)
    ours = pair_losses(PairLogps.from_rows(SequenceLogps(policy, policy, lengths), ref), LossSettings(beta=beta)).mean()
    collator = DataCollatorForVisionPreference(processor)
    # A row's images for TRL: `_images` where a row has several, else its one `image`.
    inputs = collator([{"images": r.get("_images") or [Image.open(io.BytesIO(r["image"])).convert("RGB")], **r["_trl"]} for r in rows])
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, beta=beta, loss_type=["sigmoid"])
    trainer = object.__new__(DPOTrainer)
    trainer.args, trainer.accelerator, trainer.model, trainer.ref_model = args, Accelerator(cpu=True), model, None
    trainer.beta, trainer.precompute_ref_logps, trainer.loss_types = beta, False, args.loss_type
    trainer.loss_weights = [1.0]
    trainer.ld_alpha, trainer.f_divergence_type = args.ld_alpha, args.f_divergence_type
    trainer.f_alpha_divergence_coef, trainer.label_smoothing = args.f_alpha_divergence_coef, args.label_smoothing
    trainer.use_weighting, trainer.aux_loss_enabled = args.use_weighting, False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    with torch.no_grad():
        theirs = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return LossComparison(ours.item(), theirs.item(), batch, inputs, policy, model)


# -- what every family's trainer test checks the same way --------------------------------------
# `config(output_dir, **overrides)` makes the family's train config; `reference` is the result of
# an uninterrupted run of `config(...)` (4 steps, checkpoints every 2).


def check_crash_then_resume_is_bitwise(config, reference, tmp_path: Path) -> None:
    """A crash at step 3, resumed from the step-2 checkpoint: the same metrics and adapter bytes."""
    import torch

    from conftest import adapter_tensors, run_train

    crashed = run_train(config(tmp_path), env={"DPO_FAULT_CRASH_AT_STEP": "3"})
    assert crashed.exit_code == 1 and crashed.last["error_type"] == "Crash"
    resumed = run_train(config(tmp_path, resume_from=str(tmp_path / "checkpoints" / "step-00000002")))
    assert resumed.exit_code == 0, resumed.last
    assert [e["metrics"] for e in resumed.of("step")] == [e["metrics"] for e in reference.of("step")[2:]]
    final, expected = adapter_tensors(resumed.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"])
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def check_oom_backoff_keeps_the_effective_batch(config, reference, tmp_path: Path) -> None:
    """OOM above micro-batch 1: backed off to 1 x 4, within float noise of the reference adapter."""
    from conftest import adapter_distance, adapter_distance_bound, adapter_tensors, run_train

    result = run_train(config(tmp_path), env={"DPO_FAULT_OOM_ABOVE_MICRO_BATCH": "1"})
    assert result.exit_code == 0, result.last
    assert [(e["micro_batch"], e["grad_accum"]) for e in result.of("oom_backoff")] == [(1, 4)]
    distance = adapter_distance(adapter_tensors(result.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"]))
    assert distance < adapter_distance_bound(config(tmp_path / "bound"), reference)


def check_precomputed_reference_gives_the_same_losses(config, reference, model_dir: Path, shards: list[Path], tmp_path: Path) -> None:
    """Reference log-probs scored once (batch 5, other padding) give the per-step losses to 1e-5."""
    import pytest

    from conftest import run_train
    from test_reference import run_reference

    scored = run_reference({"model_dir": str(model_dir), "shards": [str(p) for p in shards],
                            "output_dir": str(tmp_path / "ref"), "batch_size": 5})
    assert scored.exit_code == 0, scored.last
    ref_file = str(Path(scored.last["path"]) / "ref_logps.parquet")
    result = run_train(config(tmp_path / "out", precompute_ref_log_probs=True, ref_log_probs_files=[ref_file]))
    assert result.exit_code == 0, result.last
    for a, b in zip(result.of("step"), reference.of("step"), strict=True):
        for name in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert a["metrics"][name] == pytest.approx(b["metrics"][name], abs=1e-5), name


def tiny_qwen(model_type: str, folder: Path) -> Path:
    """The tiny random-init model of a Qwen2-VL-family model_type (qwen2_5_vl, qwen3_vl)."""
    from dpo_trainer import build_tiny_model

    build = {"qwen2_5_vl": build_tiny_model.write_tiny_qwen2_5_vl, "qwen3_vl": build_tiny_model.write_tiny_qwen3_vl}[model_type]
    return build(folder / f"tiny-{model_type}", seed=0)

"""Gemma 3 end to end in the trainer, on a tiny random-init Gemma3ForConditionalGeneration (its
real classes through AutoModelForImageTextToText / AutoProcessor; build_tiny_model --arch gemma3).

Gemma 3's processor resizes every image to one fixed size (SigLIP pixels, [C, H, W] per image),
expands each `<start_of_image>` into a block of mm_tokens_per_image soft tokens, and returns
`token_type_ids` marking those soft tokens, from which the model lets each image's tokens attend
to each other bidirectionally; the collate stage must build that mask from the shard. Checked: the
DPO loss equals TRL's (its own vision collator and `_compute_loss` on the same model and LoRA
weights) and differs without the mask, LoRA reaches the vision tower, resume is bitwise exact,
OOM backoff keeps the numbers, precomputed reference log-probs give the same losses, a prompt with
the wrong soft-token count is refused by name, and the ONNX export is refused up front.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import adapter_tensors, run_train
from family_kit import (
    check_crash_then_resume_is_bitwise,
    check_oom_backoff_keeps_the_effective_batch,
    check_precomputed_reference_gives_the_same_losses,
    compare_with_trl,
    lora_train_config,
    processor_rows,
    two_shards,
    write_rows,
)


def gemma_rows(processor, n: int, seed: int) -> list[dict]:
    return processor_rows(processor, n, seed, "gemma3", prompt_special_tokens=False)


@pytest.fixture(scope="module")
def gemma_model_dir(tmp_path_factory) -> Path:
    from dpo_trainer.build_tiny_model import write_tiny_gemma3

    return write_tiny_gemma3(tmp_path_factory.mktemp("gemma3") / "tiny-gemma3", seed=0)


@pytest.fixture(scope="module")
def processor(gemma_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(gemma_model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def gemma_shards(processor, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("gemma-shards")
    return two_shards(folder, gemma_rows(processor, 16, seed=5))


@pytest.fixture(scope="module")
def gemma_config(gemma_model_dir, gemma_shards):
    return lambda output_dir, **overrides: lora_train_config(gemma_model_dir, gemma_shards, output_dir, **overrides)


@pytest.fixture(scope="module")
def gemma_reference_run(gemma_config, tmp_path_factory):
    config = gemma_config(tmp_path_factory.mktemp("gemma-reference"))
    result = run_train(config)
    assert result.exit_code == 0, result.last
    return config, result


def test_collate_builds_the_pixels_and_the_image_token_mask(gemma_model_dir, gemma_shards, processor):
    from dpo_trainer.data import PixelCache, collate, load_shards
    from dpo_trainer.modeling import load_base_model

    loaded = load_base_model(str(gemma_model_dir), torch.float32, torch.device("cpu"))
    # The PIL backend, or the torchvision one where torchvision is installed (the GPU machine's python3).
    assert type(loaded.image_processor).__name__ in ("Gemma3ImageProcessorPil", "Gemma3ImageProcessor")
    assert loaded.spec.image_tokens_per_image == 16
    rows = load_shards([str(gemma_shards[0])]).rows(range(4))
    batch = collate(rows, loaded.spec.pad_token_id, PixelCache(loaded.image_processor, loaded.spec.image_token_id))
    expected = [processor.image_processor(images=[Image.open(io.BytesIO(r["image"])).convert("RGB")], return_tensors="pt") for r in rows]
    assert torch.equal(batch.pixel_values, torch.cat([e["pixel_values"] for e in expected] * 2))
    assert batch.pixel_values.shape[1:] == (3, 32, 32)
    # One block of 16 soft tokens per row, marked 1; <start_of_image>/<end_of_image> and text 0.
    assert batch.token_type_ids is not None and batch.token_type_ids.sum(-1).tolist() == [16] * 8
    soft = processor.tokenizer.image_token_id
    assert torch.equal(batch.token_type_ids.bool(), batch.input_ids == soft)


def test_loss_equals_trls_on_the_tiny_model(gemma_model_dir, processor, tmp_path):
    pytest.importorskip("trl")
    from dpo_trainer.modeling import completion_logps

    result = compare_with_trl(gemma_model_dir, processor, gemma_rows(processor, 4, seed=9), tmp_path)
    batch, inputs = result.batch, result.inputs
    assert "token_type_ids" in inputs
    # The same sequences and the same image-token mask (TRL's from the processor).
    keep = inputs["attention_mask"].bool()
    assert torch.equal(inputs["input_ids"][keep], batch.input_ids[batch.attention_mask.bool()])
    assert torch.equal(inputs["token_type_ids"][keep].long(), batch.token_type_ids[batch.attention_mask.bool()])
    assert abs(result.ours - math.log(2)) > 1e-3, "policy and reference should differ"
    assert result.ours == pytest.approx(result.theirs, abs=1e-5)
    # Without the mask the image tokens attend causally: other log-probs.
    with torch.no_grad():
        causal_policy, _ = completion_logps(result.model, dataclasses.replace(batch, token_type_ids=None))
    assert not torch.allclose(causal_policy, result.policy_logps, atol=1e-4)


def test_lora_reaches_the_vision_tower(gemma_reference_run):
    _, result = gemma_reference_run
    assert [e["step"] for e in result.of("step")] == [1, 2, 3, 4]
    weights = adapter_tensors(result.last["adapter_path"])
    assert any(".vision_tower." in n for n in weights)
    assert any("language_model" in n for n in weights)
    assert all(float(w.abs().max()) > 0 for n, w in weights.items() if "lora_B" in n)


def test_crash_then_resume_is_bitwise_exact(gemma_reference_run, gemma_config, tmp_path):
    check_crash_then_resume_is_bitwise(gemma_config, gemma_reference_run[1], tmp_path)


def test_oom_backoff_keeps_the_effective_batch(gemma_reference_run, gemma_config, tmp_path):
    check_oom_backoff_keeps_the_effective_batch(gemma_config, gemma_reference_run[1], tmp_path)


def test_precomputed_reference_gives_the_same_losses(gemma_reference_run, gemma_config, gemma_model_dir, gemma_shards, tmp_path):
    check_precomputed_reference_gives_the_same_losses(gemma_config, gemma_reference_run[1], gemma_model_dir, gemma_shards, tmp_path)


def test_image_tokens_that_do_not_fit_the_image_are_refused(gemma_config, gemma_shards, processor, tmp_path):
    table = pq.read_table(gemma_shards[0]).to_pylist()
    # The soft token (Gemma3Processor.image_token_id is <start_of_image>, the placeholder).
    image_token = processor.tokenizer.image_token_id
    # One soft token too few (as a tokenize run for another mm_tokens_per_image would make).
    ids = table[0]["prompt_input_ids"]
    table[0]["prompt_input_ids"] = ids[: ids.index(image_token)] + ids[ids.index(image_token) + 1 :]
    bad = write_rows(tmp_path / "bad.parquet", table)
    result = run_train(gemma_config(tmp_path / "out", train_shards=[str(bad)], max_steps=1))
    assert result.exit_code == 65, result.last
    assert result.last["error_type"] == "InvalidInput"
    message = result.last["message"]
    expected = len([t for t in ids if t == image_token])
    assert expected == 16
    assert table[0]["sample_id"] in message and f"has {expected - 1} <image> tokens" in message and f"expects {expected}" in message, message
    # Refused before training: no step ran.
    assert not result.of("step")


def test_pytorch_scoring_of_base_and_adapter(gemma_reference_run, gemma_model_dir, gemma_shards):
    from conftest import run_evaluate

    _, reference = gemma_reference_run
    common = {"model_dir": str(gemma_model_dir), "shards": [str(gemma_shards[1])], "batch_size": 3}
    base = run_evaluate(common)
    tuned = run_evaluate({**common, "adapter_dir": reference.last["adapter_path"]})
    assert base.exit_code == tuned.exit_code == 0, (base.last, tuned.last)
    assert base.last["metrics"]["samples"] == 8
    assert base.last["metrics"]["reward_margin_mean"] == 0 and tuned.last["metrics"]["reward_margin_mean"] != 0


def test_onnx_export_is_refused_by_name(gemma_model_dir, tmp_path):
    import contextlib
    import io as _io

    from dpo_trainer.cli import run_command
    from dpo_trainer.config import ExportConfig, load_config
    from dpo_trainer.export import export

    config = tmp_path / "export.json"
    config.write_text(json.dumps({"model_dir": str(gemma_model_dir), "adapter_dir": None, "out_dir": str(tmp_path / "out")}))
    out = _io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(lambda: export(load_config(ExportConfig, str(config))))
    last = json.loads(out.getvalue().strip().splitlines()[-1])
    assert (code, last["error_type"]) == (65, "ModelLoadError")
    assert "ONNX export of Gemma 3 is not supported" in last["message"] and "dpo_trainer.evaluate" in last["message"]
    assert not (tmp_path / "out").exists()


def test_estimate_counts_what_peft_trains(gemma_model_dir):
    from dpo_trainer.config import LoraSettings
    from dpo_trainer.estimate import estimate
    from dpo_trainer.modeling import attach_lora, load_base_model

    raw = {"model": {"source": str(gemma_model_dir)}, "train": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}}}
    counted = estimate(raw, model_dir=str(gemma_model_dir))["parameters"]
    model = load_base_model(str(gemma_model_dir), torch.float32, torch.device("cpu")).model
    assert counted["total"] == sum(p.numel() for p in model.parameters())
    peft = attach_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    assert counted["lora_trainable"] == sum(p.numel() for p in peft.parameters() if p.requires_grad)


def test_pan_and_scan_is_refused_by_name(gemma_model_dir, tmp_path):
    import shutil

    from dpo_trainer.errors import ModelLoadError
    from dpo_trainer.modeling import load_base_model

    folder = shutil.copytree(gemma_model_dir, tmp_path / "pan-and-scan")
    for name in ("preprocessor_config.json", "processor_config.json"):
        config = json.loads((folder / name).read_text())
        config.get("image_processor", config)["do_pan_and_scan"] = True
        (folder / name).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="do_pan_and_scan: true"):
        load_base_model(str(folder), torch.float32, torch.device("cpu"))

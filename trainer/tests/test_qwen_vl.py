"""Qwen2.5-VL and Qwen3-VL end to end in the trainer, on tiny random-init
Qwen2_5_VLForConditionalGeneration and Qwen3VLForConditionalGeneration models with their real
processor classes (build_tiny_model --arch qwen2_5_vl / qwen3_vl). Every test runs for both.

Qwen's processor returns every image's patches flattened ([patches, C*t*p*p]) with
`image_grid_thw`, and the model derives its M-RoPE position ids from the grid and the attention
mask; the collate stage must build both from the shard's image bytes. The images here have
different sizes, so every batch mixes grids. Checked: the DPO loss equals TRL's (its own vision
collator and `_compute_loss` on the same model and LoRA weights), LoRA reaches the vision tower
and the patch merger, resume is bitwise exact, OOM backoff keeps the numbers, precomputed
reference log-probs give the same losses, and a prompt whose image-token count does not fit its
image is refused by name.
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
    tiny_qwen,
    two_shards,
    write_rows,
)


def qwen_rows(processor, n: int, seed: int) -> list[dict]:
    return processor_rows(processor, n, seed, "qwen")


# model_type -> the family's name in messages.
FAMILIES = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def model_type(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def qwen_model_dir(model_type, tmp_path_factory) -> Path:
    return tiny_qwen(model_type, tmp_path_factory.mktemp(model_type))


@pytest.fixture(scope="module")
def processor(qwen_model_dir, model_type):
    from dpo_trainer.vision_processors import load_image_only_processor

    return load_image_only_processor(qwen_model_dir, model_type)


@pytest.fixture(scope="module")
def qwen_shards(processor, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("qwen-shards")
    return two_shards(folder, qwen_rows(processor, 16, seed=5))


@pytest.fixture(scope="module")
def qwen_config(qwen_model_dir, qwen_shards):
    return lambda output_dir, **overrides: lora_train_config(qwen_model_dir, qwen_shards, output_dir, **overrides)


@pytest.fixture(scope="module")
def qwen_reference_run(qwen_config, tmp_path_factory):
    config = qwen_config(tmp_path_factory.mktemp("qwen-reference"))
    result = run_train(config)
    assert result.exit_code == 0, result.last
    return config, result


def test_collate_builds_the_flat_pixels_and_grids(qwen_model_dir, qwen_shards, processor):
    from dpo_trainer.data import PixelCache, collate, load_shards
    from dpo_trainer.modeling import load_base_model

    loaded = load_base_model(str(qwen_model_dir), torch.float32, torch.device("cpu"))
    assert type(loaded.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    rows = load_shards([str(qwen_shards[0])]).rows(range(4))
    batch = collate(rows, loaded.spec.pad_token_id, PixelCache(loaded.image_processor, loaded.spec.image_token_id))
    expected = [processor.image_processor(images=[Image.open(io.BytesIO(r["image"])).convert("RGB")], return_tensors="pt") for r in rows]
    grids = torch.cat([e["image_grid_thw"] for e in expected])
    # Chosen rows' images, then the rejected rows' (the same images again), in row order.
    assert torch.equal(batch.image_grid_thw, torch.cat([grids, grids]))
    assert torch.equal(batch.pixel_values, torch.cat([e["pixel_values"] for e in expected] * 2))
    assert len({tuple(g.tolist()) for g in grids}) > 1, "the batch should mix image sizes"


def test_loss_equals_trls_on_the_tiny_model(qwen_model_dir, processor, model_type, tmp_path):
    pytest.importorskip("trl")
    from dpo_trainer.modeling import completion_logps

    result = compare_with_trl(qwen_model_dir, processor, qwen_rows(processor, 4, seed=9), tmp_path)
    batch, inputs = result.batch, result.inputs
    assert "image_grid_thw" in inputs
    # The same sequences: TRL pads prompts left then flushes left, which must land on ours; the
    # image-token mask the model takes its M-RoPE positions from is the processor's.
    assert torch.equal(inputs["input_ids"][inputs["attention_mask"].bool()], batch.input_ids[batch.attention_mask.bool()])
    assert torch.equal(inputs["mm_token_type_ids"].long(), batch.mm_token_type_ids)
    assert abs(result.ours - math.log(2)) > 1e-3, "policy and reference should differ"
    assert result.ours == pytest.approx(result.theirs, abs=1e-5)
    # Without the image-token mask Qwen2.5-VL silently uses 1-D positions (a different loss);
    # Qwen3-VL refuses to run.
    flat = dataclasses.replace(batch, mm_token_type_ids=None)
    with torch.no_grad():
        if model_type == "qwen3_vl":
            with pytest.raises(ValueError, match="mm_token_type_ids"):
                completion_logps(result.model, flat)
        else:
            flat_policy, _ = completion_logps(result.model, flat)
            assert not torch.allclose(flat_policy, result.policy_logps, atol=1e-3)


def test_lora_reaches_the_vision_tower_and_merger(qwen_reference_run, model_type):
    _, result = qwen_reference_run
    assert [e["step"] for e in result.of("step")] == [1, 2, 3, 4]
    weights = adapter_tensors(result.last["adapter_path"])
    assert any(".visual.blocks." in n for n in weights) and any(".visual.merger." in n for n in weights)
    if model_type == "qwen3_vl":  # and the DeepStack mergers, which feed the first text layers
        assert any(".visual.deepstack_merger_list." in n for n in weights)
    assert any("language_model" in n for n in weights)
    assert all(float(w.abs().max()) > 0 for n, w in weights.items() if "lora_B" in n)


def test_crash_then_resume_is_bitwise_exact(qwen_reference_run, qwen_config, tmp_path):
    check_crash_then_resume_is_bitwise(qwen_config, qwen_reference_run[1], tmp_path)


def test_oom_backoff_keeps_the_effective_batch(qwen_reference_run, qwen_config, tmp_path):
    check_oom_backoff_keeps_the_effective_batch(qwen_config, qwen_reference_run[1], tmp_path)


def test_precomputed_reference_gives_the_same_losses(qwen_reference_run, qwen_config, qwen_model_dir, qwen_shards, tmp_path):
    check_precomputed_reference_gives_the_same_losses(qwen_config, qwen_reference_run[1], qwen_model_dir, qwen_shards, tmp_path)


def test_image_tokens_that_do_not_fit_the_image_are_refused(qwen_config, qwen_shards, processor, tmp_path):
    table = pq.read_table(qwen_shards[0]).to_pylist()
    image_token = processor.image_token_id
    # One image token too few for the first sample's image (as a tokenize run with other pixel limits would make).
    ids = table[0]["prompt_input_ids"]
    table[0]["prompt_input_ids"] = ids[: ids.index(image_token)] + ids[ids.index(image_token) + 1 :]
    bad = write_rows(tmp_path / "bad.parquet", table)
    result = run_train(qwen_config(tmp_path / "out", train_shards=[str(bad)], max_steps=1))
    assert result.exit_code == 65, result.last
    assert result.last["error_type"] == "InvalidInput"
    message = result.last["message"]
    expected = len([t for t in ids if t == image_token])
    assert table[0]["sample_id"] in message and f"expects {expected} for its image" in message, message
    # Refused before training, from the images' headers: no step ran.
    assert not result.of("step")


def test_pytorch_scoring_of_base_and_adapter(qwen_reference_run, qwen_model_dir, qwen_shards):
    from conftest import run_evaluate

    _, reference = qwen_reference_run
    common = {"model_dir": str(qwen_model_dir), "shards": [str(qwen_shards[1])], "batch_size": 3}
    base = run_evaluate(common)
    tuned = run_evaluate({**common, "adapter_dir": reference.last["adapter_path"]})
    assert base.exit_code == tuned.exit_code == 0, (base.last, tuned.last)
    assert base.last["metrics"]["samples"] == 8
    assert base.last["metrics"]["reward_margin_mean"] == 0 and tuned.last["metrics"]["reward_margin_mean"] != 0


def test_onnx_export_is_refused_by_name(qwen_model_dir, model_type, tmp_path):
    import contextlib
    import io as _io

    from dpo_trainer.cli import run_command
    from dpo_trainer.config import ExportConfig, load_config
    from dpo_trainer.export import export

    config = tmp_path / "export.json"
    config.write_text(json.dumps({"model_dir": str(qwen_model_dir), "adapter_dir": None, "out_dir": str(tmp_path / "out")}))
    out = _io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(lambda: export(load_config(ExportConfig, str(config))))
    last = json.loads(out.getvalue().strip().splitlines()[-1])
    assert (code, last["error_type"]) == (65, "ModelLoadError")
    assert f"ONNX export of {FAMILIES[model_type]} is not supported" in last["message"] and "dpo_trainer.evaluate" in last["message"]
    assert not (tmp_path / "out").exists()


def test_sft_forwards_the_chosen_rows_with_their_images(qwen_model_dir, qwen_shards, qwen_config, tmp_path):
    """The sft objective's batch holds the chosen rows alone, with one image grid each, and its
    loss is transformers' own Qwen2.5-VL loss with the prompt labelled -100; a short sft run on
    the flat pixel layout finishes."""
    from dpo_trainer.data import PixelCache, collate, load_shards
    from dpo_trainer.modeling import _forward_takes, completion_token_stats, load_base_model

    loaded = load_base_model(str(qwen_model_dir), torch.float32, torch.device("cpu"))
    rows = load_shards([str(qwen_shards[0])]).rows(range(4))
    pixels = PixelCache(loaded.image_processor, loaded.spec.image_token_id)
    both = collate(rows, loaded.spec.pad_token_id, pixels)
    chosen = collate(rows, loaded.spec.pad_token_id, pixels, chosen_only=True)
    assert chosen.input_ids.shape[0] == 4 and torch.equal(chosen.image_grid_thw, both.image_grid_thw[:4])
    assert torch.equal(chosen.pixel_values, both.pixel_values[: chosen.pixel_values.shape[0]])
    model = loaded.model.eval()
    inputs = {"input_ids": chosen.input_ids, "attention_mask": chosen.attention_mask, "pixel_values": chosen.pixel_values,
              "image_grid_thw": chosen.image_grid_thw}
    if _forward_takes(model, "mm_token_type_ids"):
        inputs["mm_token_type_ids"] = chosen.mm_token_type_ids
    with torch.no_grad():
        stats = completion_token_stats(model, chosen)
        theirs = model(**inputs, labels=chosen.input_ids.masked_fill(chosen.completion_mask == 0, -100)).loss
    assert (-stats.log_probs.sum() / stats.mask.sum()).item() == pytest.approx(theirs.item(), abs=1e-5)
    result = run_train(qwen_config(tmp_path, objective="sft", max_steps=2, merge_model=True))
    assert result.exit_code == 0, result.last
    assert set(result.of("step")[-1]["metrics"]) >= {"loss", "mean_token_accuracy", "entropy", "num_tokens"}
    assert (Path(result.last["model_path"]) / "config.json").is_file()

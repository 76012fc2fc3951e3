"""LLaVA-NeXT end to end in the trainer, on a tiny random-init LlavaNextForConditionalGeneration
with its real LlavaNextProcessor (build_tiny_model --arch llava_next).

Anyres: the processor fits each image into the best of its grid pinpoints and returns the tiles
of that grid plus the whole image, [tiles, C, H, W] per image, with the image's `image_sizes`,
from which the model counts the tiles and removes the letterbox; the prompt holds as many
`<image>` tokens as that leaves features. The shard's images have different sizes, so every
batch mixes tile counts and the collate must pad them. Checked: the DPO loss equals TRL's (its
own vision collator and `_compute_loss` on the same model and LoRA weights), LoRA reaches tower,
projector and language model, resume is bitwise exact, OOM backoff keeps the numbers, precomputed reference log-probs give the same losses, a prompt
with the wrong image-token count is refused by name before step 1, PyTorch scoring works and the
ONNX export is refused up front.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from dpo_trainer.build_tiny_model import write_tiny_llava_next

    return write_tiny_llava_next(tmp_path_factory.mktemp("llava-next") / "tiny-llava-next", seed=0)


@pytest.fixture(scope="module")
def processor(model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def shards(processor, tmp_path_factory) -> list[Path]:
    return two_shards(tmp_path_factory.mktemp("llava-next-shards"), processor_rows(processor, 16, 5, "llava_next"))


@pytest.fixture(scope="module")
def config(model_dir, shards):
    return lambda output_dir, **overrides: lora_train_config(model_dir, shards, output_dir, **overrides)


@pytest.fixture(scope="module")
def reference_run(config, tmp_path_factory):
    result = run_train(config(tmp_path_factory.mktemp("llava-next-reference")))
    assert result.exit_code == 0, result.last
    return result


def test_collate_pads_the_tiles_and_keeps_each_images_size(model_dir, shards, processor):
    from dpo_trainer.data import PixelCache, collate, load_shards
    from dpo_trainer.modeling import load_base_model

    loaded = load_base_model(str(model_dir), torch.float32, torch.device("cpu"))
    rows = load_shards([str(shards[0])]).rows(range(6))
    batch = collate(rows, loaded.spec.pad_token_id, PixelCache(loaded.image_processor, loaded.spec.image_token_id))
    expected = [processor.image_processor(images=[Image.open(io.BytesIO(r["image"])).convert("RGB")], return_tensors="pt") for r in rows]
    tiles = [e["pixel_values"].shape[1] for e in expected]
    assert len(set(tiles)) > 1, "the batch should mix tile counts"
    # Chosen rows' images, then the rejected rows' (the same again), each padded to the most tiles.
    assert batch.pixel_values.shape == (12, max(tiles), 3, 32, 32)
    for i, e in enumerate(expected * 2):
        n = e["pixel_values"].shape[1]
        assert torch.equal(batch.pixel_values[i, :n], e["pixel_values"][0])
        assert not batch.pixel_values[i, n:].any()
    assert torch.equal(batch.image_sizes, torch.cat([e["image_sizes"] for e in expected] * 2))


def test_loss_equals_trls_on_the_tiny_model(model_dir, processor, tmp_path):
    pytest.importorskip("trl")
    rows = processor_rows(processor, 4, 9, "llava_next")
    # The Mistral template writes no bos; the processor adds it (what the model was trained
    # with), TRL's collator tokenizes prompts without special tokens: give TRL the bos as text so
    # both sides score the same ids.
    for row in rows:
        row["_trl"]["prompt"] = processor.tokenizer.bos_token + row["_trl"]["prompt"]
    result = compare_with_trl(model_dir, processor, rows, tmp_path)
    assert "image_sizes" in result.inputs
    keep = result.inputs["attention_mask"].bool()
    assert torch.equal(result.inputs["input_ids"][keep], result.batch.input_ids[result.batch.attention_mask.bool()])
    assert abs(result.ours - math.log(2)) > 1e-3, "policy and reference should differ"
    assert result.ours == pytest.approx(result.theirs, abs=1e-5)


def test_lora_reaches_tower_projector_and_language_model(reference_run):
    assert [e["step"] for e in reference_run.of("step")] == [1, 2, 3, 4]
    weights = adapter_tensors(reference_run.last["adapter_path"])
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        assert any(part in n for n in weights), part
    assert all(float(w.abs().max()) > 0 for n, w in weights.items() if "lora_B" in n)


def test_crash_then_resume_is_bitwise_exact(reference_run, config, tmp_path):
    check_crash_then_resume_is_bitwise(config, reference_run, tmp_path)


def test_oom_backoff_keeps_the_effective_batch(reference_run, config, tmp_path):
    check_oom_backoff_keeps_the_effective_batch(config, reference_run, tmp_path)


def test_precomputed_reference_gives_the_same_losses(reference_run, config, model_dir, shards, tmp_path):
    check_precomputed_reference_gives_the_same_losses(config, reference_run, model_dir, shards, tmp_path)


def test_image_tokens_that_do_not_fit_the_image_are_refused(config, shards, processor, tmp_path):
    table = pq.read_table(shards[0]).to_pylist()
    image_token = processor.image_token_id
    ids = table[0]["prompt_input_ids"]
    table[0]["prompt_input_ids"] = ids[: ids.index(image_token)] + ids[ids.index(image_token) + 1 :]
    bad = write_rows(tmp_path / "bad.parquet", table)
    result = run_train(config(tmp_path / "out", train_shards=[str(bad)], max_steps=1))
    assert result.exit_code == 65 and result.last["error_type"] == "InvalidInput", result.last
    expected = len([t for t in ids if t == image_token])
    assert table[0]["sample_id"] in result.last["message"] and f"expects {expected} for its image" in result.last["message"]
    assert not result.of("step")


def test_pytorch_scoring_and_the_export_refusal(reference_run, model_dir, shards, tmp_path):
    import contextlib
    import io as _io

    from conftest import run_evaluate
    from dpo_trainer.cli import run_command
    from dpo_trainer.config import ExportConfig, load_config
    from dpo_trainer.export import export

    common = {"model_dir": str(model_dir), "shards": [str(shards[1])], "batch_size": 3}
    base = run_evaluate(common)
    tuned = run_evaluate({**common, "adapter_dir": reference_run.last["adapter_path"]})
    assert base.exit_code == tuned.exit_code == 0, (base.last, tuned.last)
    assert base.last["metrics"]["reward_margin_mean"] == 0 and tuned.last["metrics"]["reward_margin_mean"] != 0
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"model_dir": str(model_dir), "adapter_dir": None, "out_dir": str(tmp_path / "onnx")}))
    out = _io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(lambda: export(load_config(ExportConfig, str(path))))
    last = json.loads(out.getvalue().strip().splitlines()[-1])
    assert (code, last["error_type"]) == (65, "ModelLoadError")
    assert "ONNX export of LLaVA-NeXT is not supported" in last["message"]

"""Rows with several images (shard column `extra_images`), on the tiny Qwen2.5-VL, Qwen3-VL, LLaVA,
LLaVA-NeXT and Gemma 3: the collate stage concatenates every image's patches with one grid per
image (Qwen's flat layout) or stacks the images in placeholder order (the others), the DPO loss
equals TRL's (its vision collator given the same `images` lists, its `_compute_loss`), and a
training run on mixed one- and two-image shards finishes. One-image families refuse such rows by
name, and shards without the column read as one image per row.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import run_train
from demo_data import SHARD_SCHEMA, generate_pairs
from family_kit import SIZES, compare_with_trl, lora_train_config, sized_jpeg, tiny_qwen

MULTI_SCHEMA = SHARD_SCHEMA.append(pa.field("extra_images", pa.list_(pa.binary())))
QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl")


# Every family that takes several images, each on its tiny random-init model.
@pytest.fixture(scope="module", params=[*QWEN_FAMILIES, "llava", "llava_next", "gemma3"])
def model_type(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_dir(model_type, tmp_path_factory) -> Path:
    from dpo_trainer import build_tiny_model

    folder = tmp_path_factory.mktemp(model_type)
    if model_type in QWEN_FAMILIES:
        return tiny_qwen(model_type, folder)
    write = {"llava": build_tiny_model.write_tiny_llava, "llava_next": build_tiny_model.write_tiny_llava_next, "gemma3": build_tiny_model.write_tiny_gemma3}
    return write[model_type](folder / f"tiny-{model_type}", seed=0)


@pytest.fixture(scope="module")
def processor(model_dir, model_type):
    from transformers import AutoProcessor

    from dpo_trainer.vision_processors import load_image_only_processor

    if model_type in QWEN_FAMILIES:
        return load_image_only_processor(model_dir, model_type)
    return AutoProcessor.from_pretrained(model_dir, local_files_only=True)


def multi_rows(processor, n: int, seed: int) -> list[dict]:
    """Shard rows as the Node stages make them, rows 0, 2, 4, ... with two images of different
    sizes: the prompt rendered by TRL's split of the chat template, its image tokens expanded by
    the processor itself with both images."""
    tokenizer = processor.tokenizer
    pairs = generate_pairs(n + 1, seed, "multi")
    rows = []
    for i, pair in enumerate(pairs[:n]):
        images = [sized_jpeg(pair.image_jpeg, SIZES[i % len(SIZES)])]
        if i % 2 == 0:
            images.append(sized_jpeg(pairs[i + 1].image_jpeg, SIZES[(i + 3) % len(SIZES)]))
        user = {"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": pair.question}]}
        prompt = processor.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
        answers = {}
        for key, text in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            whole = processor.apply_chat_template([user, {"role": "assistant", "content": [{"type": "text", "text": text}]}], tokenize=False)
            answers[key] = whole[len(prompt):]
        pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        # Without special tokens, as TRL's collator tokenizes prompts (the loss is compared with it).
        prompt_ids = processor(images=[pil], text=[prompt], add_special_tokens=False)["input_ids"][0]
        ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]  # noqa: E731
        rows.append({
            "sample_id": pair.sample_id, "prompt_input_ids": [int(t) for t in prompt_ids],
            "chosen_input_ids": ids(answers["chosen"]), "rejected_input_ids": ids(answers["rejected"]),
            "image": images[0], "extra_images": images[1:],
            "_trl": {"prompt": prompt, "chosen": answers["chosen"] + tokenizer.eos_token, "rejected": answers["rejected"] + tokenizer.eos_token},
            "_images": pil,
        })
    return rows


def write_multi(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.table({name: [r[name] for r in rows] for name in MULTI_SCHEMA.names}, schema=MULTI_SCHEMA), path)
    return path


def test_collate_lays_out_every_image_in_placeholder_order(model_dir, model_type, processor, tmp_path):
    from dpo_trainer.data import PixelCache, collate, load_shards, validate_against_model
    from dpo_trainer.modeling import load_base_model

    loaded = load_base_model(str(model_dir), torch.float32, torch.device("cpu"))
    dataset = load_shards([str(write_multi(tmp_path / "s.parquet", multi_rows(processor, 4, seed=3)))])
    validate_against_model(dataset, loaded.spec)  # the image-token counts of two-image prompts
    rows = dataset.rows(range(4))
    assert [len(r["extra_images"]) for r in rows] == [1, 0, 1, 0]
    batch = collate(rows, loaded.spec.pad_token_id, PixelCache(loaded.image_processor, loaded.spec.image_token_id))
    images = [Image.open(io.BytesIO(b)).convert("RGB") for r in rows for b in [r["image"], *r["extra_images"]]]
    expected = [processor.image_processor(images=[im], return_tensors="pt") for im in images]
    if model_type not in QWEN_FAMILIES:
        # Stacked: one entry per image (anyres tiles padded to the batch's most), chosen rows then rejected.
        assert batch.pixel_values.shape[0] == 12
        if model_type == "llava_next":
            sizes = torch.cat([e["image_sizes"] for e in expected])
            assert torch.equal(batch.image_sizes, torch.cat([sizes, sizes]))
            for got, e in zip(batch.pixel_values, expected * 2):
                tiles = e["pixel_values"][0]
                assert torch.equal(got[: tiles.shape[0]], tiles) and not got[tiles.shape[0]:].any()
        else:
            assert torch.equal(batch.pixel_values, torch.cat([e["pixel_values"] for e in expected] * 2))
        return
    grids = torch.cat([e["image_grid_thw"] for e in expected])
    assert batch.image_grid_thw.shape[0] == 12  # 6 images, for the chosen and the rejected rows
    assert torch.equal(batch.image_grid_thw, torch.cat([grids, grids]))
    assert torch.equal(batch.pixel_values, torch.cat([e["pixel_values"] for e in expected] * 2))


def test_loss_equals_trls_with_two_images_per_prompt(model_dir, model_type, processor, tmp_path):
    pytest.importorskip("trl")
    result = compare_with_trl(model_dir, processor, multi_rows(processor, 4, seed=9), tmp_path)
    batch, inputs = result.batch, result.inputs
    if model_type in QWEN_FAMILIES:
        assert torch.equal(inputs["image_grid_thw"], batch.image_grid_thw)
    assert torch.equal(inputs["input_ids"][inputs["attention_mask"].bool()], batch.input_ids[batch.attention_mask.bool()])
    assert abs(result.ours - math.log(2)) > 1e-3, "policy and reference should differ"
    assert result.ours == pytest.approx(result.theirs, abs=1e-5)


def test_trains_on_mixed_one_and_two_image_shards(model_dir, processor, tmp_path):
    rows = multi_rows(processor, 8, seed=5)
    shards = [write_multi(tmp_path / "train-000.parquet", rows[:4]), write_multi(tmp_path / "train-001.parquet", rows[4:])]
    result = run_train(lora_train_config(model_dir, shards, tmp_path / "out", per_device_train_batch_size=2, gradient_accumulation_steps=1))
    assert result.exit_code == 0, result.last
    steps = result.of("step")
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(e["metrics"]["loss"]) for e in steps)


def test_a_one_image_family_refuses_extra_images_by_name(tmp_path):
    from dpo_trainer.data import ModelInputSpec, load_shards, validate_against_model
    from dpo_trainer.errors import InvalidInputError

    image = sized_jpeg(generate_pairs(1, 0, "x")[0].image_jpeg, (32, 32))
    row = {"sample_id": "s-0", "prompt_input_ids": [5, 5, 7], "chosen_input_ids": [8, 2], "rejected_input_ids": [9, 2], "image": image, "extra_images": [image]}
    dataset = load_shards([str(write_multi(tmp_path / "s.parquet", [row]))])
    spec = ModelInputSpec(vocab_size=100, pad_token_id=0, has_vision=True, image_token_id=5, image_tokens_per_image=1)
    with pytest.raises(InvalidInputError, match=r"sample 's-0' has 2 images, but this model family takes one image per prompt"):
        validate_against_model(dataset, spec)


def test_shards_without_the_column_read_as_one_image_per_row(tmp_path):
    from dpo_trainer.data import load_shards

    image = sized_jpeg(generate_pairs(1, 0, "x")[0].image_jpeg, (32, 32))
    table = pa.table({"sample_id": ["a", "b"], "prompt_input_ids": [[1], [1]], "chosen_input_ids": [[2], [2]], "rejected_input_ids": [[3], [3]], "image": [image, None]}, schema=SHARD_SCHEMA)
    pq.write_table(table, tmp_path / "old.parquet")
    dataset = load_shards([str(tmp_path / "old.parquet")])
    assert dataset.image_counts().tolist() == [1, 0]
    assert [r["extra_images"] for r in dataset.rows([0, 1])] == [[], []]

"""The memory estimator against the seed's published figures (HF blog "DPO for VLMs")."""

from __future__ import annotations

import pytest

from dpo_trainer.estimate import REPO_ROOT, estimate, load_pipeline_config, parse_memory, main

GB = 1e9


@pytest.fixture(scope="module")
def idefics2():
    return estimate(load_pipeline_config(str(REPO_ROOT / "configs" / "idefics2-8b.yaml")), gpu_memory="80GB")


def test_reproduces_the_blogs_table(idefics2):
    params = idefics2["parameters"]
    # The blog's print_trainable_parameters(): "trainable params: 55,348,736 || all params:
    # 8,458,116,848" (all = base + LoRA). Matching both checks the vendored config.json too.
    assert params["lora_trainable"] == 55_348_736
    assert params["total"] + params["lora_trainable"] == 8_458_116_848
    assert params["rounded_as_in_blog"] == 8e9
    assert idefics2["blog_tables_rounded"]["fp32 full DPO"]["total"] == pytest.approx(160 * GB)
    assert round(idefics2["blog_tables_rounded"]["bf16 + LoRA"]["total"] / GB, 1) == 32.3
    # With the exact count instead of "8B": 168.1 GB and 33.9 GB.
    assert round(idefics2["blog_tables_exact"]["fp32 full DPO"]["total"] / GB, 1) == 168.1
    assert round(idefics2["blog_tables_exact"]["bf16 + LoRA"]["total"] / GB, 1) == 33.9


def test_activations_and_suggestion(idefics2):
    assert idefics2["settings"]["micro_batch"] == 2 and idefics2["settings"]["gradient_checkpointing"]
    assert idefics2["shapes"]["patches_per_image"] == 35 * 35  # 490 px thumbnails, 14 px patches
    assert idefics2["activations"]["total"] > 0
    suggested = idefics2["suggestion"]["micro_batch"]
    assert suggested is not None and suggested >= 2 and suggested & (suggested - 1) == 0


@pytest.mark.parametrize(
    "config,total",
    [("paligemma-3b.yaml", 2_923_466_480), ("llava-1.5-7b.yaml", 7_063_427_072),
     ("qwen2.5-vl-7b.yaml", 8_292_166_656), ("qwen3-vl-8b.yaml", 8_767_123_696),
     ("llava-next-mistral-7b.yaml", 7_566_747_648), ("gemma-3-4b.yaml", 4_300_079_472)],
)
def test_vendored_configs_give_the_published_parameter_counts(config, total):
    result = estimate(load_pipeline_config(str(REPO_ROOT / "configs" / config)), gpu_memory="24GB")
    assert result["parameters"]["total"] == total


def test_memory_sizes_and_missing_models(tmp_path, capsys):
    assert parse_memory("80GB") == 80e9 and parse_memory("80 GiB") == 80 * 2**30 and parse_memory("40") == 40e9
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{ source: {tmp_path}/no-model }}\n")
    assert main(["--config", str(config)]) == 65
    assert "no config.json found" in capsys.readouterr().err


def test_qwen_patches_follow_the_pixel_budget():
    result = estimate(load_pipeline_config(str(REPO_ROOT / "configs" / "qwen2.5-vl-7b.yaml")), gpu_memory="80GB")
    # format.max_pixels 1280 x 28 x 28 in 14 px patches: 5120 patches, 1280 tokens after the 2x2 merge.
    assert result["shapes"]["patches_per_image"] == 5120
    assert result["shapes"]["vision_layers"] == 32 and result["shapes"]["vision_hidden"] == 1280
    # The model card's "8.29B"; LoRA r=16 on every linear layer of tower, merger and language model.
    assert result["parameters"]["lora_trainable"] == 51_824_640
    assert result["suggestion"]["micro_batch"] is not None


def test_qwen3_vl_patches_follow_the_pixel_budget():
    result = estimate(load_pipeline_config(str(REPO_ROOT / "configs" / "qwen3-vl-8b.yaml")), gpu_memory="80GB")
    # format.max_pixels 1280 x 32 x 32 in 16 px patches: 5120 patches, 1280 tokens after the 2x2 merge.
    assert result["shapes"]["patches_per_image"] == 5120
    assert result["shapes"]["vision_layers"] == 27 and result["shapes"]["vision_hidden"] == 1152
    assert result["suggestion"]["micro_batch"] is not None


def test_llava_next_patches_cover_the_largest_pinpoint():
    result = estimate(load_pipeline_config(str(REPO_ROOT / "configs" / "llava-next-mistral-7b.yaml")), gpu_memory="80GB")
    # 672 x 672 is four 336 px tiles, plus the base tile: 5 x 24 x 24 patches of 14 px.
    assert result["shapes"]["patches_per_image"] == 5 * 24 * 24
    assert result["suggestion"]["micro_batch"] is not None


def test_gemma3_counts_and_fixed_image_size():
    config = load_pipeline_config(str(REPO_ROOT / "configs" / "gemma-3-4b.yaml"))
    small = estimate(config, gpu_memory="80GB")
    # 896 px in 14 px patches: 64 x 64 patches per image (pooled to 256 tokens after the tower).
    assert small["shapes"]["patches_per_image"] == 4096 and small["shapes"]["vision_layers"] == 27
    # LoRA r=16 on every linear layer of the SigLIP tower and the language model (the projector
    # is a bare weight, not a Linear, so all-linear leaves it out).
    assert small["parameters"]["lora_trainable"] == 38_497_792
    large = estimate(config, gpu_memory="80GB", model_dir=str(REPO_ROOT / "configs" / "models" / "gemma-3-12b-it"))
    assert large["parameters"]["total"] == 12_187_325_040
    assert large["parameters"]["lora_trainable"] == 74_165_760


def test_padding_free_counts_one_image_per_pair():
    raw = load_pipeline_config(str(REPO_ROOT / "configs" / "qwen2.5-vl-7b.yaml"))
    padded = estimate(raw, gpu_memory="80GB")
    packed = estimate({**raw, "train": {**raw["train"], "padding_free": True}}, gpu_memory="80GB")
    rows, packed_rows = padded["activations"]["rows"], packed["activations"]["rows"]
    # The vision tower sees each pair's image once; text and log-softmax keep the padded bound.
    assert packed_rows["vision tower"] == pytest.approx(rows["vision tower"] / 2)
    assert packed_rows["language model"] == rows["language model"]
    assert packed_rows["logits / log-softmax"] == rows["logits / log-softmax"]
    assert packed["settings"]["padding_free"] and not padded["settings"]["padding_free"]
    assert packed["suggestion"]["micro_batch"] >= padded["suggestion"]["micro_batch"]

"""Padding-free batches (`padding_free`, packing.py) on the tiny LLaVA, LLaVA-NeXT, Qwen2.5-VL and
Qwen3-VL models: a micro-batch packed into one sequence, each pair's prompt (and its images) once for
both answers, gives the padded batch's numbers.

Checked: the packed sequence holds each prompt once and the vision tower gets each pair's images
once; the shared-prompt attention is the block mask's (rejected sees its prompt and itself, not
chosen) with and without grouped key/value heads; per-pair policy and reference log-probs, the DPO loss, the LoRA gradients and the SFT
statistics equal the padded path's to 1e-5 on rows of different lengths and image sizes (the
M-RoPE families with their 3-D positions, which matter: 1-D positions give other numbers);
training runs give the padded run's per-step losses to 1e-5 (with gradient checkpointing too, whose
recomputation must see the same sample boundaries); a crash resumed from a checkpoint lands on the
uninterrupted padding-free run bitwise; the precomputed reference stage gives the same log-probs;
families the packing cannot serve are refused by name before the weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from conftest import adapter_distance, adapter_tensors, run_train
from family_kit import check_crash_then_resume_is_bitwise, lora_model, lora_train_config, processor_rows, tiny_qwen, two_shards, write_rows

FAMILIES = ("llava", "llava_next", "qwen2_5_vl", "qwen3_vl")


def build_model(model_type: str, folder: Path) -> Path:
    from dpo_trainer import build_tiny_model

    if model_type == "llava":
        return build_tiny_model.write_tiny_llava(folder / "tiny-llava", seed=0)
    if model_type == "llava_next":
        return build_tiny_model.write_tiny_llava_next(folder / "tiny-llava-next", seed=0)
    return tiny_qwen(model_type, folder)


def load_processor(model_type: str, model_dir: Path) -> Any:
    from transformers import AutoProcessor

    from dpo_trainer.vision_processors import IMAGE_ONLY_FAMILIES, load_image_only_processor

    if model_type in IMAGE_ONLY_FAMILIES:
        return load_image_only_processor(model_dir, model_type)
    return AutoProcessor.from_pretrained(model_dir, local_files_only=True)


def uneven_rows(processor: Any, n: int, seed: int, model_type: str) -> list[dict]:
    """Shard rows whose answers are cut to different lengths (the images differ in size too), so
    every row of a batch has its own length and the padded batch really pads."""
    rows = processor_rows(processor, n, seed, model_type)
    for i, row in enumerate(rows):
        row["chosen_input_ids"] = row["chosen_input_ids"][: max(1, len(row["chosen_input_ids"]) - (3 * i) % 7)]
        row["rejected_input_ids"] = row["rejected_input_ids"][: max(1, len(row["rejected_input_ids"]) - (5 * i + 2) % 9)]
    return rows


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp(request.param)
    model_dir = build_model(request.param, folder)
    processor = load_processor(request.param, model_dir)
    return {"model_type": request.param, "model_dir": model_dir, "rows": uneven_rows(processor, 4, 9, request.param)}


def scores(model: Any, batch: Any, padding_free: bool) -> dict[str, Any]:
    """Per-row policy and reference log-probs, the sigmoid DPO loss, the LoRA gradients of that
    loss, and the SFT statistics of the same rows."""
    from dpo_trainer.losses import LossSettings, PairLogps, sequence_logps, pair_losses
    from dpo_trainer.modeling import completion_token_logps, completion_token_stats

    with torch.no_grad(), model.disable_adapter():
        ref_tokens, ref_mask, _ = completion_token_logps(model, batch, padding_free=padding_free)
    tokens, mask, log_sum_sq = completion_token_logps(model, batch, sum_sq_probs=True, padding_free=padding_free)
    policy = sequence_logps(tokens, mask, None)
    loss = pair_losses(PairLogps.from_rows(policy, sequence_logps(ref_tokens, ref_mask, None).logps), LossSettings(beta=0.1)).mean()
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        stats = completion_token_stats(model, batch, padding_free=padding_free)
    return {
        "policy": policy.logps.detach(), "reference": ref_tokens.sum(-1), "tokens": mask.sum(-1), "loss": loss.detach(),
        "log_sum_sq": (log_sum_sq * mask).sum(-1), "grads": grads,
        "sft": (stats.log_probs.sum(-1), stats.entropy.sum(-1), stats.is_top1.sum(-1)),
    }


def test_packed_forward_equals_the_padded_one(family, monkeypatch):
    from dpo_trainer import modeling, packing
    from dpo_trainer.data import PixelCache, collate
    from dpo_trainer.modeling import completion_token_logps

    model, loaded = lora_model(family["model_dir"])
    batch = collate(family["rows"], loaded.spec.pad_token_id, PixelCache(loaded.image_processor, loaded.spec.image_token_id))
    lengths = batch.attention_mask.sum(-1)
    assert len(set(lengths.tolist())) >= 4 and batch.pixel_values is not None, "rows of different lengths, with images"
    prompts = torch.tensor([len(row["prompt_input_ids"]) for row in family["rows"]])
    if family["model_type"] in packing.MROPE_FAMILIES:
        assert len(set(prompts.tolist())) > 1, "Qwen's dynamic resolution: prompts of different lengths"
    padded = scores(model, batch, padding_free=False)
    packing.enable(model)
    # Each prompt once: the packed sequence is the padded rows' tokens less one copy of every prompt.
    images_seen = vision_inputs(model)
    packed = scores(model, batch, padding_free=True)
    layout = packing.pack(modeling._model_inputs(model, batch), batch.completion_mask, packing.rope_index_of(model), batch.pairs)
    assert layout.inputs["input_ids"].shape[1] == int(lengths.sum() - prompts.sum())
    if family["model_type"] in packing.MROPE_FAMILIES:
        # Pair 0's rejected answer sits right after its prompt + chosen, with the 3-D positions
        # get_rope_index gives the padded prompt + rejected row there (text after the image
        # continues from the image's largest position).
        rope, _ = packing.rope_index_of(model)(**packing._rope_arguments(packing.rope_index_of(model), modeling._model_inputs(model, batch)))
        b, p, n = batch.pairs, int(prompts[0]), int(lengths[0])
        rejected = slice(n, n + int(lengths[b]) - p)
        assert torch.equal(layout.inputs["position_ids"][1:, 0, rejected], rope[:, b, p:int(lengths[b])])
        assert torch.equal(layout.inputs["position_ids"][0, 0, rejected], torch.arange(p, int(lengths[b])))
    # scores() runs three forwards (reference, policy, SFT statistics), each given every pair's images once.
    assert images_seen and all(n == len(family["rows"]) for n in images_seen), images_seen
    for name in ("policy", "reference", "tokens", "loss", "log_sum_sq"):
        assert torch.allclose(packed[name], padded[name], atol=1e-5, rtol=0), (name, packed[name], padded[name])
    for a, b in zip(packed["sft"], padded["sft"], strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=0)
    assert packed["grads"].keys() == padded["grads"].keys() and padded["grads"]
    for name, grad in padded["grads"].items():
        assert torch.allclose(packed["grads"][name], grad, atol=1e-5, rtol=1e-4), name
    assert abs(padded["loss"].item() - 0.6931) > 1e-3, "policy and reference should differ"
    if family["model_type"] in packing.MROPE_FAMILIES:
        # The 3-D positions are what makes it equal: with 1-D ones on every axis the image
        # tokens sit elsewhere.
        def flat_rope(input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> tuple[torch.Tensor, None]:
            return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).unsqueeze(0).expand(3, -1, -1), None

        monkeypatch.setattr(packing, "rope_index_of", lambda model: flat_rope)
        with torch.no_grad():
            flat, _, _ = completion_token_logps(model, batch, padding_free=True)
        assert not torch.allclose(flat.sum(-1), packed["policy"], atol=1e-3)


def vision_inputs(model: Any) -> list[int]:
    """How many images each later call of the model's image-feature path receives (a list that
    fills as forwards run): per image, [images, ...] pixel_values; Qwen's flat layout, its
    image_grid_thw rows."""
    base = model.get_base_model()
    inner = getattr(base, "model", base)
    seen: list[int] = []
    original = inner.get_image_features

    def counting(pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        grid = kwargs.get("image_grid_thw", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        seen.append(int(grid.shape[0]) if grid is not None else int(pixel_values.shape[0]))
        return original(pixel_values, *args, **kwargs)

    inner.get_image_features = counting
    return seen


@pytest.mark.parametrize("groups", [1, 2])
def test_shared_prompt_attention_is_the_block_masks(groups):
    """The packed attention on [prompt, chosen, rejected] segments equals attention under the
    explicit mask: chosen causal over prompt + itself, rejected over prompt + itself (never chosen),
    samples apart."""
    from dpo_trainer.packing import packed_attention

    # Pair 1: prompt 3, chosen 2, rejected 4; pair 2: prompt 2, chosen 3, rejected 1; a prompt-less
    # pair 3: chosen 2 and rejected 2, each a sample of its own.
    positions = [0, 1, 2, 3, 4, 3, 4, 5, 6, 0, 1, 2, 3, 4, 2, 0, 1, 0, 1]
    segments = [(0, 0, 5), (1, 5, 9), (0, 9, 14), (1, 14, 15), (0, 15, 17), (0, 17, 19)]
    prompt_of = {1: (0, 3), 3: (9, 11)}
    length = len(positions)
    allowed = torch.zeros(length, length, dtype=torch.bool)
    root = 0
    for k, (kind, s, e) in enumerate(segments):
        allowed[s:e, s:e] = torch.ones(e - s, e - s, dtype=torch.bool).tril()
        if kind == 1:
            ps, pe = prompt_of[k]
            allowed[s:e, ps:pe] = True
        root = s if kind == 0 else root
    torch.manual_seed(0)
    heads, dim = 4, 8
    query = torch.randn(1, heads, length, dim, requires_grad=True)
    key = torch.randn(1, heads // groups, length, dim, requires_grad=True)
    value = torch.randn(1, heads // groups, length, dim, requires_grad=True)
    module = torch.nn.Module()
    module.num_key_value_groups = groups
    module.is_causal = True
    out, _ = packed_attention(module, query, key, value, None, scaling=dim ** -0.5, position_ids=torch.tensor([positions]))
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1), attn_mask=allowed, scale=dim ** -0.5,
    ).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (query, key, value))
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), (query, key, value)), strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_a_pair_packs_its_prompt_once():
    """[prompt, chosen, rejected] per pair: rejected's positions continue from the prompt's end,
    and the prompt's last position predicts the first token of both answers."""
    from dpo_trainer.packing import pack

    # Pair 0: prompt [5, 6], chosen [7, 8], rejected [9]; pair 1: prompt [3], chosen [4], rejected [2, 1].
    input_ids = torch.tensor([[5, 6, 7, 8], [3, 4, 0, 0], [5, 6, 9, 0], [3, 2, 1, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
    completion = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0]])

    packed = pack({"input_ids": input_ids, "attention_mask": attention}, completion, pairs=2)
    assert packed.inputs["input_ids"].tolist() == [[5, 6, 7, 8, 9, 3, 4, 2, 1]]
    assert packed.inputs["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 1, 2]]
    # Row by row in the padded layout: chosen 0 (6->7, 7->8), chosen 1 (3->4), rejected 0 (6->9),
    # rejected 1 (3->2, 2->1).
    assert packed.inputs["logits_to_keep"].tolist() == [1, 2, 5, 1, 5, 7]
    assert packed.targets.tolist() == [7, 8, 4, 9, 2, 1]
    # Rows that are not pairs of one prompt (here: the prompts differ) are packed row by row.
    other = input_ids.clone()
    other[2, 0] = 4
    assert pack({"input_ids": other, "attention_mask": attention}, completion, pairs=2).inputs["input_ids"].shape[1] == 12


def test_samples_do_not_attend_to_each_other(tiny_model_dir, demo_shards):
    """A row's log-probs do not depend on what is packed before it."""
    from dpo_trainer import packing
    from dpo_trainer.data import PixelCache, collate, load_shards
    from dpo_trainer.modeling import completion_logps

    model, loaded = lora_model(tiny_model_dir)
    packing.enable(model)
    pixels = PixelCache(loaded.image_processor, loaded.spec.image_token_id)
    dataset = load_shards([str(p) for p in demo_shards[0]])
    with torch.no_grad():
        alone, _ = completion_logps(model, collate(dataset.rows([5]), loaded.spec.pad_token_id, pixels), padding_free=True)
        after, _ = completion_logps(model, collate(dataset.rows([0, 1, 2, 5]), loaded.spec.pad_token_id, pixels), padding_free=True)
    assert torch.allclose(after[[3, 7]], alone, atol=1e-5, rtol=0)


# -- training runs ---------------------------------------------------------------------------------


def assert_same_losses(a: Any, b: Any, steps: int | None = None) -> None:
    """The same per-step metrics to 1e-5, over the first `steps` steps (all of them: None)."""
    ours, theirs = a.of("step")[:steps], b.of("step")[:steps]
    assert len(ours) == len(theirs) > 0
    for x, y in zip(ours, theirs, strict=True):
        for name in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "grad_norm"):
            assert x["metrics"][name] == pytest.approx(y["metrics"][name], abs=1e-5), (x["step"], name)


@pytest.fixture(scope="module")
def llava_padding_free_run(train_config, tmp_path_factory):
    config = train_config(tmp_path_factory.mktemp("padding-free"), padding_free=True)
    result = run_train(config)
    assert result.exit_code == 0, result.last
    return result


def test_llava_training_gives_the_padded_losses(reference_run, llava_padding_free_run, train_config, tmp_path, monkeypatch):
    from dpo_trainer import packing

    _, padded = reference_run
    assert_same_losses(llava_padding_free_run, padded)
    final = adapter_tensors(llava_padding_free_run.last["adapter_path"])
    assert adapter_distance(final, adapter_tensors(padded.last["adapter_path"])) < 1e-4
    # Gradient checkpointing recomputes each layer in backward: the layout comes with it (the
    # shared-prompt attention runs in backward too).
    calls = {"forward": 0, "backward": 0}
    shared = packing._shared_prompt_attention

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["backward" if torch._C._current_graph_task_id() >= 0 else "forward"] += 1
        return shared(*args, **kwargs)

    monkeypatch.setattr(packing, "_shared_prompt_attention", counting)
    checkpointed = run_train(train_config(tmp_path, padding_free=True, gradient_checkpointing=True, max_steps=2))
    assert checkpointed.exit_code == 0, checkpointed.last
    assert_same_losses(checkpointed, padded, steps=2)
    assert calls["forward"] and calls["backward"], calls


def test_llava_crash_then_resume_is_bitwise_exact(llava_padding_free_run, train_config, tmp_path):
    check_crash_then_resume_is_bitwise(lambda out, **kw: train_config(out, padding_free=True, **kw), llava_padding_free_run, tmp_path)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("qwen-packed")
    model_dir = tiny_qwen("qwen2_5_vl", folder)
    rows = uneven_rows(load_processor("qwen2_5_vl", model_dir), 16, 5, "qwen")
    shards = two_shards(folder, rows)
    return {"config": lambda out, **kw: lora_train_config(model_dir, shards, out, **kw)}


@pytest.fixture(scope="module")
def qwen_padding_free_run(qwen, tmp_path_factory):
    result = run_train(qwen["config"](tmp_path_factory.mktemp("qwen-pf"), padding_free=True))
    assert result.exit_code == 0, result.last
    return result


def test_qwen_training_gives_the_padded_losses(qwen, qwen_padding_free_run, tmp_path):
    padded = run_train(qwen["config"](tmp_path))
    assert padded.exit_code == 0, padded.last
    assert_same_losses(qwen_padding_free_run, padded)


def test_qwen_crash_then_resume_is_bitwise_exact(qwen, qwen_padding_free_run, tmp_path):
    check_crash_then_resume_is_bitwise(lambda out, **kw: qwen["config"](out, padding_free=True, **kw), qwen_padding_free_run, tmp_path)


def test_precomputed_reference_is_the_same(tiny_model_dir, demo_shards, tmp_path):
    from test_reference import run_reference

    common = {"model_dir": str(tiny_model_dir), "shards": [str(p) for p in demo_shards[0]], "batch_size": 8}
    tables = []
    for padding_free in (False, True):
        result = run_reference({**common, "output_dir": str(tmp_path / f"ref-{padding_free}"), "padding_free": padding_free})
        assert result.exit_code == 0, result.last
        tables.append(pq.read_table(Path(result.last["path"]) / "ref_logps.parquet").to_pydict())
    padded, packed = tables
    assert packed["sample_id"] == padded["sample_id"]
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        assert packed[column] == pytest.approx(padded[column], abs=1e-5)


def test_families_the_packing_cannot_serve_are_refused_by_name(demo_shards, train_config, tmp_path):
    from dpo_trainer.build_tiny_model import write_tiny_gemma3

    gemma = write_tiny_gemma3(tmp_path / "tiny-gemma3", seed=0)
    result = run_train(train_config(tmp_path / "out", model_dir=str(gemma), padding_free=True))
    assert (result.exit_code, result.last["error_type"]) == (65, "InvalidInput"), result.last
    message = result.last["message"]
    assert "train.padding_free" in message and "Gemma 3" in message and "bidirectionally" in message, message
    assert "Qwen2.5-VL" in message  # what it does serve
    assert not result.of("started")


def test_a_prompt_less_row_is_not_scored_from_the_previous_sample():
    """A prompt-less row (its first token a completion token) must not be scored from the previous
    sample's last position: packing scores only positions inside the same sample."""
    from dpo_trainer.packing import pack

    input_ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    completion = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])

    packed = pack({"input_ids": input_ids, "attention_mask": attention}, completion)
    assert packed.inputs["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed.inputs["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # Positions 0, 1 (predicting 6, 7) and 3 (predicting 9); never 2, which would predict 8.
    assert packed.inputs["logits_to_keep"].tolist() == [0, 1, 3]
    assert packed.targets.tolist() == [6, 7, 9]

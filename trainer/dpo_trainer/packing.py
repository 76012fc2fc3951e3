"""Padding-free micro-batches (`padding_free`): a micro-batch packed into one sequence, so no
forward work is spent on padding -- and, for preference pairs, none on a second copy of the prompt:
each pair enters as [prompt, chosen, rejected], its prompt (image tokens and the vision tower's
work on its images included) encoded once for both answers. Rows that are not pairs sharing a
prompt (supervised fine-tuning's chosen rows alone) are packed row after row.

What keeps the numbers those of the padded batch:
- **Every token keeps the position it has in its padded row.** 1-D families: 0..len-1 per row, so
  the rejected answer continues from the prompt's end, as in the padded prompt + rejected row.
  M-RoPE families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) get their 3-D positions from the model's own
  get_rope_index, run on the padded rows with their attention mask -- per row, exactly what the
  padded forward computes -- and gathered, with the 1-D text positions as the leading row
  ([4, 1, L], the layout transformers' Qwen text models read packed-sequence boundaries from).
- **The layout is read back from the text positions alone**, which reach every attention call
  (gradient-checkpoint recomputation in backward included, where no Python context survives): a
  segment starts wherever they do not step by 1; one that starts at 0 is a new sample (a pair's
  prompt + chosen, or a row); one that starts at p > 0 is a rejected answer, which attends to the
  first p tokens of the sample before it (its prompt) and causally to itself -- never to chosen.
- **Attention follows that layout.** The language model's attention gets no 2-D mask and the packed
  position ids, and its implementation is replaced, for the text model only, by
  `PACKED_ATTENTION` below (also over `flash_attention_2`, whose varlen path would read the
  rejected segment as part of the chosen one): one causal SDPA call per sample, and per rejected
  answer one SDPA call over its prompt's keys and its own with a small [answer, prompt + answer]
  mask (what the block mask computes, without materialising an L x L mask or the products it would
  discard). Row packing on CUDA in half precision uses PyTorch's varlen flash attention instead;
  shared prompts there take the per-pair SDPA path -- correct, not the fastest kernel.
  The vision tower keeps its own attention: its inputs are per image, never packed.
- **Images stay in order.** Their features are scattered into the image tokens in placeholder
  order, which the packing keeps: with shared prompts the images of the chosen rows (the first
  half of the padded batch's, whose second half repeats them for the rejected rows) in pair
  order; with row packing, all of them as the padded batch has them.
- **The LM head runs only where the loss reads it**: at the positions that predict a completion
  token (`logits_to_keep` with their indices), and the per-token results are put back into the
  padded [rows, T-1] layout, so everything downstream (sequence sums, LD-DPO, WPO, SFT metrics)
  is shared with the padded path.

Families the packing cannot serve correctly are refused by name (`check_family`), before the
weights load: a user who asks for padding-free batches gets them or an error, never a silent
fallback to padding that would change the memory and speed they planned for.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidInputError

# model_type -> family name: the families whose packed forward is checked against the padded one.
PACKABLE_FAMILIES: dict[str, str] = {
    "llava": "LLaVA",
    "llava_next": "LLaVA-NeXT",
    "qwen2_vl": "Qwen2-VL",
    "qwen2_5_vl": "Qwen2.5-VL",
    "qwen3_vl": "Qwen3-VL",
}
# Families whose attention a per-sample causal mask cannot express, or whose image layout the
# packing does not rebuild: model_type -> (family, why).
UNPACKABLE_FAMILIES: dict[str, tuple[str, str]] = {
    "gemma3": ("Gemma 3", "its image tokens attend to each other bidirectionally (token_type_ids) and half its layers"
               " use a sliding window, which the per-sample causal attention does not keep"),
    "paligemma": ("PaliGemma", "its image and prompt prefix attend bidirectionally (a prefix-LM mask), which the"
                  " per-sample causal attention does not keep"),
    "idefics2": ("Idefics2", "its images enter per row ([rows, images, C, H, W] with a pixel attention mask), a layout"
                 " the packed batch does not rebuild"),
}
MROPE_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PACKED_ATTENTION = "dpo_packed_sdpa"


def check_family(model_dir: str, field: str = "padding_free") -> None:
    """Refuse a model family the packing cannot serve, naming it; read from config.json alone, so
    the refusal comes before gigabytes of weights load. A folder without a readable config.json is
    left to the model loader, which reports it."""
    try:
        model_type = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if model_type in PACKABLE_FAMILIES:
        return
    supported = ", ".join(PACKABLE_FAMILIES.values())
    if model_type in UNPACKABLE_FAMILIES:
        family, why = UNPACKABLE_FAMILIES[model_type]
        raise InvalidInputError(
            f"{field} (train.padding_free in the pipeline config): not available for {family} (model_type {model_type!r}):"
            f" {why}; set it to false for this model (padding-free batches serve {supported})"
        )
    raise InvalidInputError(
        f"{field} (train.padding_free in the pipeline config): not available for model_type {model_type!r}, whose packed"
        f" forward is not verified against its padded one; set it to false (padding-free batches serve {supported})"
    )


def enable(model: Any) -> None:
    """Route the language model's attention through the packed-sequence implementation, whatever
    it was loaded with (transformers' varlen flash path knows no shared prompts). The vision
    tower's sub-config keeps its own implementation."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text_config = base.config.get_text_config()
    # The attention modules read the implementation from their (shared) config at each call.
    text_config._attn_implementation_internal = PACKED_ATTENTION


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sample, a rejected answer seeing its prompt and itself.
    The segments are found from the position ids (see the module's docstring); they arrive with
    every call, gradient-checkpoint recomputation included. Query/key/value are
    [1, heads, L, head_dim]; returns [1, L, heads, head_dim] as transformers' SDPA does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None or position_ids is None or query.shape[0] != 1:
        # Not a packed call (a padded forward of the same model): plain SDPA.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise InvalidInputError("padding_free: a sliding-window attention layer cannot be packed per sample")
    positions = position_ids.reshape(-1)
    starts = torch.nonzero(torch.diff(positions, prepend=positions[:1] - 2) != 1).reshape(-1)
    cu_seqlens = torch.cat([starts, starts.new_tensor([positions.numel()])])
    first = positions[starts]
    if bool((first > 0).any()):
        return _shared_prompt_attention(module, query, key, value, cu_seqlens.tolist(), first.tolist(), dropout, scaling, kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0:
        from torch.nn.attention.varlen import varlen_attn

        lengths = cu_seqlens.diff()
        longest = int(lengths.max())
        cu = cu_seqlens.to(torch.int32)
        out = varlen_attn(
            query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu, cu, longest, longest,
            scale=scaling, window_size=(-1, 0), enable_gqa=groups > 1,
        )
        return out.unsqueeze(0), None
    bounds = cu_seqlens.tolist()
    outputs = [
        sdpa_attention_forward(
            module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, dropout=dropout, scaling=scaling,
            is_causal=True, **kwargs,
        )[0]
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=1), None


def _shared_prompt_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: list[int],
    first: list[int], dropout: float, scaling: float | None, kwargs: dict[str, Any],
) -> tuple[torch.Tensor, None]:
    """Segments starting at position 0 attend causally to themselves; one starting at p > 0 (a
    rejected answer) attends to the first p tokens of the last segment that started at 0 (the
    pair's prompt, whose keys and values are shared with the chosen answer) and causally to
    itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    outputs = []
    root = 0
    for s, e, p in zip(bounds[:-1], bounds[1:], first, strict=True):
        if p == 0:
            root = s
            outputs.append(sdpa_attention_forward(
                module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, dropout=dropout, scaling=scaling,
                is_causal=True, **kwargs,
            )[0])
            continue
        n = e - s
        keys = torch.cat([key[:, :, root:root + p], key[:, :, s:e]], dim=2)
        values = torch.cat([value[:, :, root:root + p], value[:, :, s:e]], dim=2)
        ones = torch.ones((n, n), dtype=torch.bool, device=query.device)
        mask = torch.cat([torch.ones((n, p), dtype=torch.bool, device=query.device), ones.tril()], dim=1)
        outputs.append(sdpa_attention_forward(
            module, query[:, :, s:e], keys, values, mask.view(1, 1, n, p + n), dropout=dropout, scaling=scaling,
            is_causal=False, **kwargs,
        )[0])
    return torch.cat(outputs, dim=1), None


@dataclass
class PackedForward:
    """The model inputs of one packed sequence and where its scored positions sit in the padded
    layout."""

    inputs: dict[str, Any]
    rows: torch.Tensor  # [N] padded row of each scored position
    columns: torch.Tensor  # [N] its column in the shifted [rows, T-1] layout
    targets: torch.Tensor  # [N] the token each scored position predicts

    def scatter(self, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """[N] per-position values -> [rows, T-1], zero elsewhere; the graph is kept."""
        out = values.new_zeros(shape)
        return out.index_put((self.rows, self.columns), values)


def pack(
    inputs: dict[str, Any], completion_mask: torch.Tensor, rope_index: Callable[..., Any] | None = None,
    pairs: int | None = None,
) -> PackedForward:
    """Pack the padded model inputs (right-padded rows, `attention_mask` marking the tokens) into
    one sequence; score the positions that predict a completion token. `rope_index`: the M-RoPE
    model's get_rope_index (`rope_index_of`), None for 1-D positions. `pairs`: the batch's pair
    count; when its rows are [prompt + chosen; prompt + rejected] of that many pairs with the same
    prompt in both rows of a pair, each prompt is packed once (`shared_prompt_lengths`)."""
    attention_mask = inputs["attention_mask"]
    tokens = attention_mask.bool()
    positions = attention_mask.long().cumsum(-1) - 1
    prompts = shared_prompt_lengths(inputs["input_ids"], tokens, completion_mask, pairs)
    device = tokens.device
    columns_of = torch.arange(tokens.shape[1], device=device)
    # (row, column) of each packed token in the padded batch, in packed order, and index: the
    # packed position of every padded cell (a rejected row's prompt cells: the chosen row's).
    if prompts is None:
        source_rows, source_columns = tokens.nonzero(as_tuple=True)
    else:
        b = prompts.numel()
        keep = tokens.clone()
        keep[b:] &= columns_of >= prompts.unsqueeze(1)
        # Pair by pair: chosen row i (prompt + chosen), then rejected row i past its prompt.
        pair = torch.arange(b, device=device)
        order = torch.stack([pair, pair + b], dim=1).reshape(-1)
        ordered_rows, source_columns = keep[order].nonzero(as_tuple=True)
        source_rows = order[ordered_rows]
    index = torch.full(tokens.shape, -1, dtype=torch.long, device=device)
    index[source_rows, source_columns] = torch.arange(source_rows.numel(), device=device)
    if prompts is not None:
        b = prompts.numel()
        in_prompt = columns_of < prompts.unsqueeze(1)
        index[b:] = torch.where(in_prompt, index[:b], index[b:])
    text_positions = positions[source_rows, source_columns]
    position_ids: torch.Tensor = text_positions.unsqueeze(0)
    if rope_index is not None and inputs.get("image_grid_thw") is not None:
        rope, _ = rope_index(**_rope_arguments(rope_index, inputs))
        position_ids = torch.cat([text_positions.unsqueeze(0), rope[:, source_rows, source_columns]]).unsqueeze(1)  # [4, 1, L]
    elif rope_index is not None:
        # Text-only rows of an M-RoPE family: its 3-D positions are the 1-D ones on each axis.
        position_ids = text_positions.view(1, 1, -1).expand(4, 1, -1)
    packed = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    packed["input_ids"] = inputs["input_ids"][source_rows, source_columns].unsqueeze(0)
    if "mm_token_type_ids" in inputs:
        packed["mm_token_type_ids"] = inputs["mm_token_type_ids"][source_rows, source_columns].unsqueeze(0)
    if prompts is not None:
        packed.update(_chosen_images(inputs))
    packed["position_ids"] = position_ids
    # Position j of a row predicts its token j + 1: scored where that token is a completion one.
    # A rejected row's last prompt position is the chosen row's: it predicts both first tokens.
    scored = completion_mask[:, 1:].bool() & tokens[:, 1:]
    rows, columns = scored.nonzero(as_tuple=True)
    packed["logits_to_keep"] = index[rows, columns]
    return PackedForward(packed, rows, columns, inputs["input_ids"][:, 1:][scored])


def shared_prompt_lengths(
    input_ids: torch.Tensor, tokens: torch.Tensor, completion_mask: torch.Tensor, pairs: int | None
) -> torch.Tensor | None:
    """Each pair's prompt length [pairs] when the rows are that many pairs' prompt + chosen rows,
    then their prompt + rejected rows, with the same prompt tokens in both rows of a pair (what
    `collate` builds); None otherwise (chosen rows alone, or anything else), which packs rows."""
    if pairs is None or pairs == 0 or input_ids.shape[0] != 2 * pairs:
        return None
    # A row's prompt: its tokens before the first completion token (all of them if it has none).
    before = (completion_mask.long().cumsum(-1) == 0) & tokens
    lengths = before.sum(-1)
    chosen, rejected = lengths[:pairs], lengths[pairs:]
    if not torch.equal(chosen, rejected):
        return None
    in_prompt = torch.arange(input_ids.shape[1], device=input_ids.device) < chosen.unsqueeze(1)
    if not torch.equal(input_ids[:pairs][in_prompt], input_ids[pairs:][in_prompt]):
        return None
    return chosen


def _chosen_images(inputs: dict[str, Any]) -> dict[str, Any]:
    """The image inputs of the chosen rows alone: `collate` lays the images out for the chosen
    rows, then the same again for the rejected rows, so the first half of each is what the shared
    prompts hold, in their order. Qwen's flat layout: the first half of image_grid_thw, and the
    patches of those images."""
    out: dict[str, Any] = {}
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        return out
    grid = inputs.get("image_grid_thw")
    if grid is not None:
        half = grid.shape[0] // 2
        out["image_grid_thw"] = grid[:half]
        out["pixel_values"] = pixel_values[: int(grid[:half].prod(-1).sum())]
        return out
    half = pixel_values.shape[0] // 2
    out["pixel_values"] = pixel_values[:half]
    if inputs.get("image_sizes") is not None:
        out["image_sizes"] = inputs["image_sizes"][:half]
    return out


def rope_index_of(model: Any) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """The M-RoPE model's get_rope_index, or None for 1-D families."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config.model_type not in MROPE_FAMILIES:
        return None
    inner = getattr(base, "model", base)
    return inner.get_rope_index


def _rope_arguments(rope_index: Callable[..., Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The padded inputs get_rope_index takes (transformers >= 5.x finds the image tokens through
    mm_token_type_ids; earlier releases by image_token_id)."""
    names = _parameters(rope_index.__func__ if hasattr(rope_index, "__func__") else rope_index)
    arguments = {"input_ids": inputs["input_ids"], "image_grid_thw": inputs["image_grid_thw"],
                 "attention_mask": inputs["attention_mask"]}
    if "mm_token_type_ids" in names and "mm_token_type_ids" in inputs:
        arguments["mm_token_type_ids"] = inputs["mm_token_type_ids"]
    return arguments


@functools.cache
def _parameters(function: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)

"""Padding-free micro-batches (`padding_free`): a micro-batch's rows (prompt + chosen and prompt +
rejected of each pair) packed into one sequence, so no forward work is spent on padding.

What keeps the numbers those of the padded batch:
- **Positions restart at 0 in every sample.** 1-D families get 0..len-1 per row. M-RoPE families
  (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) get their 3-D positions from the model's own get_rope_index,
  run on the padded rows with their attention mask -- per sample, exactly what the padded forward
  computes -- then packed, with the 1-D text positions as the leading row ([4, 1, L], the layout
  transformers' Qwen text models read packed-sequence boundaries from).
- **Attention stays within each sample.** The language model's attention gets no 2-D mask and
  the packed position ids; its implementation decides how the samples are kept apart:
  `flash_attention_2`/`_3` (when the model is loaded with it) are transformers' own varlen path,
  which reads the boundaries from the position ids; every other implementation is replaced, for
  the text model only, by `PACKED_ATTENTION` below: PyTorch's varlen flash attention on CUDA in
  half precision, else one causal SDPA call per sample (what a block-diagonal causal mask
  computes, without materialising an L x L mask or the cross-sample products it would discard).
  The vision tower keeps its own attention: its inputs are per image, never packed.
- **Images are untouched.** Their features are scattered into the image tokens in placeholder
  order, and packing keeps the rows' order, so pixel_values, image_grid_thw and image_sizes are
  the padded batch's.
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
# Attention implementations that read packed-sequence boundaries from position ids themselves.
VARLEN_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")


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
    """Route the language model's attention through the packed-sequence implementation (unless it
    is a varlen one already). The vision tower's sub-config keeps its own implementation."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text_config = base.config.get_text_config()
    if text_config._attn_implementation in VARLEN_IMPLEMENTATIONS:
        return
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
    """Causal attention within each packed sample. The samples are found from the position ids
    (a sample starts wherever they do not step by 1), as transformers' own varlen path finds
    them; they arrive with every call, gradient-checkpoint recomputation included. Query/key/value
    are [1, heads, L, head_dim]; returns [1, L, heads, head_dim] as transformers' SDPA does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None or position_ids is None or query.shape[0] != 1:
        # Not a packed call (a padded forward of the same model): plain SDPA.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise InvalidInputError("padding_free: a sliding-window attention layer cannot be packed per sample")
    positions = position_ids.reshape(-1)
    starts = torch.nonzero(torch.diff(positions, prepend=positions[:1] - 2) != 1).reshape(-1)
    cu_seqlens = torch.cat([starts, starts.new_tensor([positions.numel()])])
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
    inputs: dict[str, Any], completion_mask: torch.Tensor, rope_index: Callable[..., Any] | None = None
) -> PackedForward:
    """Pack the padded model inputs (right-padded rows, `attention_mask` marking the tokens) into
    one sequence; score the positions that predict a completion token. `rope_index`: the M-RoPE
    model's get_rope_index (`rope_index_of`), None for 1-D positions."""
    attention_mask = inputs["attention_mask"]
    tokens = attention_mask.bool()
    lengths = tokens.sum(-1)
    text_positions = (attention_mask.long().cumsum(-1) - 1)[tokens]
    position_ids: torch.Tensor = text_positions.unsqueeze(0)
    if rope_index is not None and inputs.get("image_grid_thw") is not None:
        rope, _ = rope_index(**_rope_arguments(rope_index, inputs))
        position_ids = torch.cat([text_positions.unsqueeze(0), rope[:, tokens]]).unsqueeze(1)  # [4, 1, L]
    elif rope_index is not None:
        # Text-only rows of an M-RoPE family: its 3-D positions are the 1-D ones on each axis.
        position_ids = text_positions.view(1, 1, -1).expand(4, 1, -1)
    packed = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    packed["input_ids"] = inputs["input_ids"][tokens].unsqueeze(0)
    if "mm_token_type_ids" in inputs:
        packed["mm_token_type_ids"] = inputs["mm_token_type_ids"][tokens].unsqueeze(0)
    packed["position_ids"] = position_ids
    # Position j of a row predicts its token j + 1: scored where that token is a completion one.
    scored = completion_mask[:, 1:].bool() & tokens[:, 1:]
    rows, columns = scored.nonzero(as_tuple=True)
    offsets = torch.cumsum(lengths, 0) - lengths
    packed["logits_to_keep"] = offsets[rows] + columns
    return PackedForward(packed, rows, columns, inputs["input_ids"][:, 1:][scored])


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

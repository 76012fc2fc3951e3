"""Load the base model, attach LoRA, and score completions.

The reference model is the same weights with the adapters switched off
(`with model.disable_adapter()`), so DPO with LoRA needs one copy of the base weights instead of
two -- the memory saving the HF "DPO for VLMs" recipe relies on.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import LoraSettings
from .data import ModelInputSpec, PreferenceBatch, PreferenceDataset, load_shards, validate_against_model
from .errors import InvalidInputError, ModelLoadError
from .vision_processors import IMAGE_ONLY_FAMILIES, load_image_only_processor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device: {name!r} requested but no CUDA device is available")
    return device


def check_dtype_supported(device: torch.device, dtype_name: str) -> None:
    """Refuse a dtype the device cannot compute in, before loading gigabytes of weights: a CUDA
    GPU without bfloat16 (before Ampere), or a CPU whose kernels fail on it. The CPU check runs a
    tiny linear layer forward and backward under the same autocast training uses."""
    import os

    if dtype_name == "float32":
        return
    dtype = DTYPES[dtype_name]
    hint = f"use dtype float32{' or float16' if dtype_name == 'bfloat16' and device.type == 'cuda' else ''}"
    if os.environ.get("DPO_FAULT_DTYPE_UNSUPPORTED") == dtype_name:  # faults.py: tests of this path
        raise InvalidInputError(f"dtype: {dtype_name} is not supported on {device} (DPO_FAULT_DTYPE_UNSUPPORTED); {hint}")
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            name = torch.cuda.get_device_name(device)
            raise InvalidInputError(f"dtype: bfloat16 is not supported by {name} (needs compute capability 8.0+); {hint}")
        return
    try:
        # No nn.Linear: its random init would shift the seeded RNG stream of the run.
        weight = torch.ones(4, 4, device=device, dtype=dtype, requires_grad=True)
        with torch.autocast(device_type=device.type, dtype=dtype):
            torch.nn.functional.linear(torch.ones(2, 4, device=device, dtype=dtype), weight).float().sum().backward()
    except (RuntimeError, NotImplementedError) as exc:
        raise InvalidInputError(f"dtype: {dtype_name} is not supported on {device} ({exc}); {hint}") from None


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for bf16/fp16; float32 runs without autocast (bitwise-reproducible)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel (later wrapped in a PeftModel)
    image_processor: Any | None
    spec: ModelInputSpec


def load_base_model(model_dir: str, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    """Load a vision-language model (AutoModelForImageTextToText + AutoProcessor) or, when the
    architecture has no vision tower, a causal LM (AutoModelForCausalLM + AutoTokenizer)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelLoadError(f"model_dir {model_dir} does not exist or is not a folder")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model_dir {model_dir} has no config.json; expected a save_pretrained folder")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        has_vision = config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        if has_vision:
            if config.model_type in IMAGE_ONLY_FAMILIES:
                # Without the video processor transformers would require torchvision for.
                processor = load_image_only_processor(folder, config.model_type)
            else:
                processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            tokenizer = processor.tokenizer
            image_processor = processor.image_processor
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            image_processor = None
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the model in {model_dir}: {type(exc).__name__}: {exc}") from None
    if has_vision and config.model_type == "gemma3" and getattr(image_processor, "do_pan_and_scan", None):
        # The image processor alone would add crops per image that Gemma3Processor's own call
        # (and the Node tokenizer) do not expand into the prompt: refuse rather than mismatch.
        raise ModelLoadError(
            f"{model_dir}: preprocessor_config.json sets do_pan_and_scan: true, which is not supported for"
            " Gemma 3 (its extra crops are not in the tokenized prompts); set it to false or null"
        )
    model.to(device)
    model.config.use_cache = False  # no KV cache while training: it only costs memory
    text_config = config.get_text_config()
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        # Padding is masked out of attention and loss, so any valid id works.
        pad_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    image_token_id = getattr(config, "image_token_id", None) if has_vision else None
    # LLaVA's processor expands <image> to a fixed count; other families (image splitting) vary,
    # and for those we only check that image rows have placeholders at all.
    image_tokens = getattr(config, "image_seq_length", None) if config.model_type == "llava" else None
    if config.model_type == "gemma3":
        # Fixed-size images: mm_tokens_per_image soft tokens each (pan-and-scan off).
        image_tokens = getattr(config, "mm_tokens_per_image", None)
    spec = ModelInputSpec(
        vocab_size=text_config.vocab_size,
        pad_token_id=pad_token_id,
        has_vision=has_vision,
        image_token_id=image_token_id,
        image_tokens_per_image=image_tokens,
        image_tokens_for_size=(
            _size_token_counter(image_processor) if has_vision and config.model_type in IMAGE_ONLY_FAMILIES
            else _anyres_token_counter(processor) if config.model_type == "llava_next"
            else None
        ),
        multi_image=has_vision and (config.model_type in IMAGE_ONLY_FAMILIES or config.model_type in STACKED_MULTI_IMAGE_FAMILIES),
    )
    return LoadedModel(model, image_processor, spec)


# Families whose model takes every image of a batch stacked in placeholder order ([images, C, H, W],
# anyres [images, tiles, C, H, W] with image_sizes) and scatters each image's features into its own
# placeholder tokens, so a prompt may hold several. PaliGemma's prefix layout and Idefics2's
# per-row [rows, images, C, H, W] one are not among them.
STACKED_MULTI_IMAGE_FAMILIES = ("llava", "llava_next", "gemma3")


def _size_token_counter(image_processor: Any) -> Any:
    """(height, width) -> image tokens, by the image processor's own arithmetic (smart_resize)."""
    if not hasattr(image_processor, "get_number_of_image_patches"):
        return None
    merge = int(getattr(image_processor, "merge_size", 1))
    return lambda height, width: int(image_processor.get_number_of_image_patches(height, width, {})) // merge**2


def _anyres_token_counter(processor: Any) -> Any:
    """(height, width) -> image tokens, by LlavaNextProcessor's own count (grid pinpoint, letterbox
    removed, a newline per row, the base tile)."""
    return lambda height, width: int(processor._get_num_multimodal_tokens(image_sizes=[[height, width]]).num_image_tokens[0])


def attach_lora(model: Any, lora: LoraSettings) -> Any:
    """Wrap the model in a PEFT LoRA adapter; only the adapter weights train."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # "all-linear": every nn.Linear except the output head -- language model, vision tower
        # and multimodal projector alike, as in the HF DPO-for-VLMs recipe.
        target_modules=lora.target_modules,
        bias="none",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:  # e.g. target_modules matching nothing
        raise InvalidInputError(f"lora.target_modules: {exc}") from None


def enable_gradient_checkpointing(model: Any) -> None:
    # Non-reentrant checkpointing works with frozen inputs (LoRA), so no
    # enable_input_require_grads() hook is needed.
    base = model.get_base_model()
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # older transformers (the GPU machine's preinstalled 5.17) have only this name
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def completion_logps(model: Any, batch: PreferenceBatch, *, padding_free: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(token) over the completion tokens of each row (prompt and padding masked),
    and the number of those tokens -- TRL's concatenated_forward on [chosen; rejected]."""
    token_logps, mask, _ = completion_token_logps(model, batch, padding_free=padding_free)
    return token_logps.sum(-1), mask.sum(-1)


def completion_token_logps(
    model: Any, batch: PreferenceBatch, *, sum_sq_probs: bool = False, padding_free: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token log p(token) [2B, T-1], zero outside the completions, and the completion mask
    (float); with `sum_sq_probs`, also log sum_v p(v)^2 at each position (what WPO's weights
    need; no gradient), as TRL's fused LM head returns them. `padding_free`: one packed forward
    (packing.py; each pair's prompt once), the same numbers in the same layout."""
    scored = _scored_logits(model, batch, padding_free)
    logits, targets = scored.logits, scored.targets
    # gather - logsumexp == log_softmax at the target, without materialising the full log_softmax.
    log_z = logits.logsumexp(-1)
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
    log_sum_sq = None
    if sum_sq_probs:
        with torch.no_grad():
            log_sum_sq = scored.place((2 * logits).logsumexp(-1) - 2 * log_z)
    return scored.place(token_logps) * scored.mask, scored.mask, log_sum_sq


@dataclass
class CompletionTokenStats:
    """What TRL SFTTrainer's fused LM head returns per position ("log_probs", "entropy",
    "is_top1"), zero outside the completions, with the completion mask."""

    log_probs: torch.Tensor  # [B, T-1], carries the graph
    entropy: torch.Tensor  # [B, T-1], no gradient (a metric)
    is_top1: torch.Tensor  # [B, T-1] bool: the target is the first argmax of the logits
    mask: torch.Tensor  # [B, T-1] float


def completion_token_stats(model: Any, batch: PreferenceBatch, *, padding_free: bool = False) -> CompletionTokenStats:
    """The supervised fine-tuning forward: per-token log-probs of the completion tokens and the
    entropy / top-1 agreement SFTTrainer logs, from one forward pass."""
    scored = _scored_logits(model, batch, padding_free)
    logits, targets, mask = scored.logits, scored.targets, scored.mask
    log_z = logits.logsumexp(-1)
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
    with torch.no_grad():
        probs = (logits - log_z.unsqueeze(-1)).exp()
        # H = log Z - sum_v p_v z_v, TRL's chunked kernel's form.
        entropy = log_z - (probs * logits).sum(-1)
        is_top1 = scored.place((logits.argmax(-1) == targets).to(mask.dtype)) > 0
    return CompletionTokenStats(scored.place(token_logps) * mask, scored.place(entropy) * mask, is_top1 & (mask > 0), mask)


@dataclass
class ScoredLogits:
    """float32 logits at the positions the loss may read, the tokens they predict, and how a
    per-position result goes back to the padded [rows, T-1] layout (`place`), with the completion
    mask there. Padded: every position of every row ([rows, T-1, V]); padding-free: only the
    positions that predict a completion token ([N, V])."""

    logits: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor  # [rows, T-1] float
    place: Callable[[torch.Tensor], torch.Tensor]


def _scored_logits(model: Any, batch: PreferenceBatch, padding_free: bool) -> ScoredLogits:
    inputs = _model_inputs(model, batch)
    mask = batch.completion_mask[:, 1:].float()
    if padding_free:
        from . import packing

        packed = packing.pack(inputs, batch.completion_mask, packing.rope_index_of(model), batch.pairs)
        logits = model(**packed.inputs, use_cache=False).logits[0].float()
        shape = (mask.shape[0], mask.shape[1])
        return ScoredLogits(logits, packed.targets, mask, lambda values: packed.scatter(values, shape))
    logits = model(**inputs, use_cache=False).logits[:, :-1, :].float()
    return ScoredLogits(logits, batch.input_ids[:, 1:], mask, lambda values: values)


def _model_inputs(model: Any, batch: PreferenceBatch) -> dict[str, Any]:
    """The padded batch as the model's forward takes it."""
    inputs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.pixel_values is not None:
        inputs["pixel_values"] = batch.pixel_values.to(model.dtype if hasattr(model, "dtype") else torch.float32)
    if batch.image_grid_thw is not None:
        # Qwen2-VL: the patches' grid per image, from which the model also derives its M-RoPE
        # position ids (get_rope_index, with the attention mask for the padding).
        inputs["image_grid_thw"] = batch.image_grid_thw
    if batch.image_sizes is not None:
        # LLaVA-NeXT: each image's size, from which the model counts its tiles and unpads them.
        inputs["image_sizes"] = batch.image_sizes
    if batch.mm_token_type_ids is not None and _forward_takes(model, "mm_token_type_ids"):
        # transformers >= 5.x finds the image tokens for get_rope_index through this; releases
        # whose forward does not name it find them by image_token_id themselves.
        inputs["mm_token_type_ids"] = batch.mm_token_type_ids
    if batch.token_type_ids is not None:
        # Gemma 3: the image blocks' bidirectional attention mask.
        inputs["token_type_ids"] = batch.token_type_ids
    return inputs


def _forward_takes(model: Any, name: str) -> bool:
    """Whether the (PEFT-wrapped) model's own forward names this argument."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _signature_has(type(base), name)


@functools.cache
def _signature_has(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


def load_for_scoring(
    model_dir: str, shards: list[str], device_name: str, dtype_name: str
) -> tuple[PreferenceDataset, LoadedModel, torch.device, torch.dtype]:
    """The start of every scoring command (evaluate, reference): device and dtype checked, shards
    and base model loaded, shards validated against the model -- all before any forward pass."""
    device = resolve_device(device_name)
    dtype = DTYPES[dtype_name]
    check_dtype_supported(device, dtype_name)
    dataset = load_shards(shards)
    loaded = load_base_model(model_dir, dtype, device)
    validate_against_model(dataset, loaded.spec)
    return dataset, loaded, device, dtype


# Files save_pretrained writes itself (config, generation config, weights and their index):
# what is left of a base folder is its processor, tokenizer and chat template files.
_MODEL_FILE = re.compile(r"(config|generation_config)\.json|.*\.(safetensors|bin|pt|pth|gguf)|.*\.index\.json")


def save_merged_model(model: Any, base_dir: Path, out: Path) -> None:
    """The base model with the LoRA adapter merged into its weights (PEFT merge_and_unload), saved
    with save_pretrained beside a copy of the base folder's processor and tokenizer files: a
    model folder that loads like the base (AutoProcessor + AutoModelFor...). Ends the adapter's
    use: the PEFT wrapper is unloaded, so this runs after the adapter itself is saved."""
    import shutil

    merged = model.merge_and_unload()
    merged.config.use_cache = True  # off only while training (load_base_model)
    merged.save_pretrained(out)
    for path in sorted(base_dir.iterdir()):
        if path.is_file() and not path.name.startswith(".") and not _MODEL_FILE.fullmatch(path.name):
            shutil.copyfile(path, out / path.name)

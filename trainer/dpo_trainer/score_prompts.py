"""Answer prompts with the base model or base + adapter (CONTRACT.md, score_prompts).

    python -m dpo_trainer.score_prompts --config CONFIG.json

The pytorch evaluate engine's counterpart of the ONNX graphs' `last_logits`: for each prompt
(token ids with the image tokens already expanded, as the tokenize stage writes them, and the
image's bytes), the log-probabilities of a few next tokens and a greedy answer. The caller turns
them into metrics, so the metric definitions live in one place (contracts/evalMetrics.ts).

Greedy decoding here is the ONNX engine's: no KV cache, each step reruns the whole sequence,
the first argmax wins, and the end-of-sequence token stops the answer without being part of it.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cli import config_command
from .config import PromptScoreConfig
from .data import PixelCache, collate
from .errors import ExitCode, InvalidInputError
from .evaluate import load_adapter
from .modeling import DTYPES, autocast, check_dtype_supported, load_base_model, resolve_device


@dataclass(frozen=True)
class PromptRequest:
    id: str
    prompt_input_ids: list[int]
    image: bytes | None
    next_tokens: list[int]
    max_new_tokens: int
    # A row's images after the first, in placeholder order (several-image prompts).
    extra_images: list[bytes] = field(default_factory=list)


def read_requests(path: str) -> tuple[list[PromptRequest], int]:
    """The requests file: {"eos_token_id": int, "items": [{id, prompt_input_ids, image (base64
    or null), next_tokens, max_new_tokens, extra_images (base64 list, optional)}]}."""
    try:
        data = json.loads(Path(path).read_text())
        items = [
            PromptRequest(
                str(item["id"]),
                [int(t) for t in item["prompt_input_ids"]],
                base64.b64decode(item["image"]) if item.get("image") else None,
                [int(t) for t in item.get("next_tokens", [])],
                int(item.get("max_new_tokens", 0)),
                [base64.b64decode(b) for b in item.get("extra_images") or []],
            )
            for item in data["items"]
        ]
        return items, int(data["eos_token_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"requests {path}: {type(exc).__name__}: {exc}") from None


def _last_logits(model: Any, pad_token_id: int, pixels: PixelCache | None, request: PromptRequest, ids: list[int]) -> torch.Tensor:
    """float32 logits after `ids`, one row (no padding, so every family's positions are its own)."""
    row = {"sample_id": request.id, "prompt_input_ids": ids, "chosen_input_ids": [], "image": request.image, "extra_images": request.extra_images}
    batch = collate([row], pad_token_id, pixels, chosen_only=True)
    inputs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.pixel_values is not None:
        inputs["pixel_values"] = batch.pixel_values.to(model.dtype if hasattr(model, "dtype") else torch.float32)
    for name in ("image_grid_thw", "image_sizes", "mm_token_type_ids", "token_type_ids"):
        value = getattr(batch, name)
        if value is not None:
            inputs[name] = value
    return model(**inputs, use_cache=False).logits[0, -1, :].float()


@torch.no_grad()
def score_prompts(config: PromptScoreConfig) -> list[dict[str, Any]]:
    requests, eos = read_requests(config.requests)
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    check_dtype_supported(device, config.dtype)
    loaded = load_base_model(config.model_dir, dtype, device)
    model = loaded.model
    if config.adapter_dir:
        model = load_adapter(model, config.adapter_dir)
    model.eval()
    pixels = PixelCache(loaded.image_processor, loaded.spec.image_token_id) if loaded.image_processor else None
    pad = loaded.spec.pad_token_id
    out: list[dict[str, Any]] = []
    for request in requests:
        if request.image is not None and pixels is None:
            raise InvalidInputError(f"prompt {request.id!r} has an image but the model has no image processor")
        with autocast(device, dtype):
            logits = _last_logits(model, pad, pixels, request, request.prompt_input_ids)
            log_probs = logits - logits.logsumexp(-1)
            next_logprobs = [float(log_probs[t]) for t in request.next_tokens]
            ids = list(request.prompt_input_ids)
            generated: list[int] = []
            for step in range(request.max_new_tokens):
                if step:
                    logits = _last_logits(model, pad, pixels, request, ids)
                best = int(torch.argmax(logits))
                if best == eos:
                    break
                ids.append(best)
                generated.append(best)
        out.append({"id": request.id, "next_logprobs": next_logprobs, "generated": generated})
    return out


def main(argv: list[str] | None = None) -> int:
    return config_command(argv, "answer prompts", PromptScoreConfig, run_scoring)


def run_scoring(config: PromptScoreConfig) -> int:
    answers = score_prompts(config)
    # Written whole, then renamed: a reader never sees half a file.
    tmp = Path(f"{config.output}.tmp")
    tmp.write_text(json.dumps({"items": answers}))
    tmp.replace(config.output)
    return ExitCode.FINISHED


if __name__ == "__main__":
    sys.exit(main())

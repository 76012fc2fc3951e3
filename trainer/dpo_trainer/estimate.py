"""GPU memory estimate for a DPO run, from the model config alone (no weights, no GPU).

    python -m dpo_trainer.estimate --config configs/idefics2-8b.yaml [--gpu-memory 80GB] [--json]

Parameters are counted exactly by instantiating the architecture on PyTorch's meta device
(AutoConfig + AutoModelForImageTextToText / AutoModelForCausalLM: shapes only, no memory), and
the LoRA trainable parameters by wrapping that meta model with peft exactly as training does.

Three tables:

* the seed's (Hugging Face blog "Preference Optimization for Vision Language Models with TRL",
  huggingface.co/blog/dpo_vlm): weights + a reference copy + gradients + AdamW's two moments,
  with the parameter count rounded to one significant digit as the blog does ("Idefics2-8b has
  8 billion parameters"): fp32 full DPO = 5 x 8e9 x 4 B = 160 GB; bf16 + LoRA = 2 x 8e9 x 2 B +
  3 x 55.3 M x 2 B = 32.3 GB. The same rows with the exact count follow.
* this trainer: LoRA on a frozen base in `dtype`, the reference being the same weights with
  the adapters disabled (no second copy), adapter weights, gradients and AdamW moments in fp32.
* activations for the configured micro-batch and sequence length, and a suggested starting
  micro-batch for a given GPU memory.

The activation model (documented in docs/training-and-durability.md) is a first-order estimate, not a
measurement: per layer and token, about 10 x hidden + 4 x intermediate stored values (norm
inputs/outputs, q/k/v/o, the MLP's gate/up/activation/down inputs; flash/SDPA attention keeps no
seq x seq matrix), 2 bytes each under bf16/fp16 autocast, 4 in fp32; with gradient checkpointing
only each layer's input plus one layer recomputed. DPO runs chosen and rejected rows in one
forward pass (2 x micro-batch rows, each with its image), and the float32 log-softmax over the
vocabulary adds about 14 bytes per row, position and vocabulary entry. With `padding_free`,
each pair's prompt and image go through the model once for both answers: the vision tower sees
one image per pair instead of two. The text tokens and the log-softmax positions are kept at the
padded bound (a pair with a short prompt and long answers saves next to nothing there), so the
estimate stays an upper bound.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .config import LoraSettings, TrainConfig
from .errors import InvalidInputError, ModelLoadError

REPO_ROOT = Path(__file__).resolve().parents[2]
VENDORED_MODELS = REPO_ROOT / "configs" / "models"
GB = 1e9  # the blog's unit: decimal gigabytes
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ACTIVATION_VALUES_PER_TOKEN = (10, 4)  # x hidden, x intermediate, per layer (see module doc)
LOGIT_BYTES_PER_ENTRY = 14  # bf16 logits, their float32 copy, log-softmax temp, its gradient
# Left for the CUDA context, allocator fragmentation and kernels' workspaces.
GPU_RESERVE_BYTES = 1.5 * GB
GPU_USABLE_SHARE = 0.9
# Micro-batch sizes `auto` may pick (powers of two, as the OOM backoff halves them).
MAX_SUGGESTED_MICRO_BATCH = 64
CPU_AUTO_MICRO_BATCH = 8

# Defaults of the fields the estimate reads (the `dpo estimate` CLI passes the resolved config, so
# these only matter when the Python command is given a hand-written file). The train settings'
# are TrainConfig's, which the pipeline config takes as its own; max_length is the pipeline's
# tokenize section's (contracts/config.ts), which the trainer never reads.
_TRAIN = {f.name: f for f in fields(TrainConfig)}
DEFAULTS = {
    "max_length": 1024,
    "per_device_train_batch_size": _TRAIN["per_device_train_batch_size"].default,
    "dtype": _TRAIN["dtype"].default,
    "gradient_checkpointing": _TRAIN["gradient_checkpointing"].default,
    "lora": asdict(LoraSettings()),
}


# ----------------------------------------------------------------------------------------------
# Finding the model config


def find_model_config(source: str, model_dir: str | None = None) -> tuple[Any, str]:
    """The model's transformers config and where it came from: a local model folder, the
    repository's vendored configs/models/<name>/config.json, or the Hugging Face Hub."""
    from transformers import AutoConfig

    tried: list[str] = []
    candidates: list[Path] = []
    if model_dir:
        candidates.append(Path(model_dir))
    local = source[len("file://") :] if source.startswith("file://") else source
    if not re.match(r"^[a-z0-9]+://", local):
        candidates.append(Path(local))
    repo_id = source[len("hf://") :].strip("/") if source.startswith("hf://") else None
    name = (repo_id or source.rstrip("/")).split("/")[-1]
    candidates.append(VENDORED_MODELS / name)
    for folder in candidates:
        if (folder / "config.json").is_file():
            return AutoConfig.from_pretrained(folder, local_files_only=True), str(folder / "config.json")
        tried.append(f"{folder}/config.json (absent)")
    if repo_id:
        try:
            return AutoConfig.from_pretrained(repo_id), f"hf://{repo_id}"
        except (OSError, ValueError) as exc:
            tried.append(f"the Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
    raise ModelLoadError(
        f"model.source {source!r}: no config.json found; tried " + "; ".join(tried)
        + ". Pass --model-dir with a folder holding the model's config.json"
    )


# ----------------------------------------------------------------------------------------------
# Counting parameters on the meta device


@dataclass
class ParameterCounts:
    total: int  # base model parameters (tied weights counted once)
    lora_trainable: int
    model_type: str
    architecture: str


def count_parameters(config: Any, lora: dict[str, Any]) -> ParameterCounts:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    auto = AutoModelForImageTextToText if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(
        model,
        LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                   target_modules=lora["target_modules"], bias="none"),
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return ParameterCounts(total, trainable, config.model_type, type(model).__name__)


# ----------------------------------------------------------------------------------------------
# The tables


def blog_rows(params: float, trainable: float) -> dict[str, dict[str, float]]:
    """The seed's two tables: {component: bytes} for fp32 full DPO and bf16 + LoRA."""
    full = {"model to train": params * 4, "reference model": params * 4, "gradients": params * 4,
            "optimizer states (AdamW, 2 moments)": 2 * params * 4}
    lora = {"model to train": params * 2, "reference model": params * 2, "gradients": trainable * 2,
            "optimizer states (AdamW, 2 moments)": 2 * trainable * 2}
    return {"fp32 full DPO": full, "bf16 + LoRA": lora}


def round_like_the_blog(n: int) -> float:
    """'Idefics2-8b has 8 billion parameters': one significant digit."""
    magnitude = 10 ** math.floor(math.log10(n))
    return round(n / magnitude) * magnitude


def trainer_rows(counts: ParameterCounts, dtype: str) -> dict[str, float]:
    t = counts.lora_trainable
    return {
        f"base weights ({dtype})": counts.total * BYTES[dtype],
        "reference model (same weights, adapters disabled)": 0.0,
        "LoRA weights (fp32)": t * 4,
        "gradients (fp32)": t * 4,
        "optimizer states (AdamW, fp32)": 2 * t * 4,
    }


@dataclass
class Shapes:
    text_hidden: int
    text_intermediate: int
    text_layers: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    patches_per_image: int


# The published processors' max_pixels, for configs that do not set format.max_pixels:
# transformers' Qwen2VLImageProcessor default for Qwen2(.5)-VL, Qwen3-VL's size.longest_edge.
QWEN_DEFAULT_MAX_PIXELS = {"qwen2_vl": 28 * 28 * 1280, "qwen2_5_vl": 28 * 28 * 1280, "qwen3_vl": 16777216}


def model_shapes(config: Any, image_longest_edge: int | None, max_pixels: int | None = None) -> Shapes:
    text = config.get_text_config()
    vision = getattr(config, "vision_config", None)
    patches = 0
    if vision is not None and config.model_type in QWEN_DEFAULT_MAX_PIXELS:
        # Native resolution up to a pixel budget: at most max_pixels / patch^2 patches per image
        # (smart_resize keeps the pixel count within max_pixels).
        patches = (max_pixels or QWEN_DEFAULT_MAX_PIXELS[config.model_type]) // vision.patch_size**2
        intermediate = getattr(vision, "intermediate_size", None) or int(vision.embed_dim * getattr(vision, "mlp_ratio", 4))
        return Shapes(
            text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size,
            getattr(vision, "embed_dim", None) or vision.hidden_size, intermediate, vision.depth, patches,
        )
    if vision is not None:
        size = vision.image_size if isinstance(vision.image_size, int) else max(vision.image_size)
        patch = vision.patch_size if isinstance(vision.patch_size, int) else max(vision.patch_size)
        if config.model_type == "llava_next":
            # Anyres: the base tile plus the tiles of the largest grid pinpoint (672 x 672 is four
            # 336 px tiles), the most an image can take.
            tiles = 1 + max(h * w for h, w in config.image_grid_pinpoints) // size**2
            patches = tiles * (size // patch) ** 2
            return Shapes(
                text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size,
                vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, patches,
            )
        if config.model_type.startswith("idefics"):
            # Native-resolution processors: the thumbnail's longest edge (half the processor's
            # longest edge by default, the seed's setting) sets the patch count, square at most.
            edge = min(image_longest_edge or size // 2, size)
        else:
            edge = size  # fixed-resolution processors resize every image to image_size
        patches = math.ceil(edge / patch) ** 2
    return Shapes(
        text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size,
        getattr(vision, "hidden_size", 0), getattr(vision, "intermediate_size", 0),
        getattr(vision, "num_hidden_layers", 0), patches,
    )


def activation_bytes(shapes: Shapes, micro_batch: int, seq_len: int, dtype: str, checkpointing: bool,
                     padding_free: bool = False) -> dict[str, float]:
    a, b = ACTIVATION_VALUES_PER_TOKEN
    width = BYTES[dtype]
    rows = 2 * micro_batch  # chosen and rejected in one forward pass
    images = micro_batch if padding_free else rows  # padding-free: one image per pair

    def tower(hidden: int, intermediate: int, layers: int, tokens: int) -> float:
        per_layer = tokens * (a * hidden + b * intermediate) * width
        if checkpointing:
            return layers * tokens * hidden * width + per_layer
        return layers * per_layer

    text = tower(shapes.text_hidden, shapes.text_intermediate, shapes.text_layers, rows * seq_len)
    vision = tower(shapes.vision_hidden, shapes.vision_intermediate, shapes.vision_layers, images * shapes.patches_per_image)
    logits = rows * seq_len * shapes.vocab * LOGIT_BYTES_PER_ENTRY
    return {"language model": text, "vision tower": vision, "logits / log-softmax": logits}


def parse_memory(text: str) -> float:
    """'80GB', '80 GiB', '80' (GB) -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(gib|gb|g|mib|mb|tib|tb)?\s*", text.lower())
    if not m:
        raise InvalidInputError(f"--gpu-memory: expected a size such as 80GB or 79.6GiB, got {text!r}")
    unit = {"gib": 2**30, "gb": 1e9, "g": 1e9, "mib": 2**20, "mb": 1e6, "tib": 2**40, "tb": 1e12, None: 1e9}[m.group(2)]
    return float(m.group(1)) * unit


@dataclass
class Suggestion:
    micro_batch: int | None
    gradient_checkpointing: bool
    usable_bytes: float
    needed_bytes: float | None
    note: str


def suggest_micro_batch(static: float, shapes: Shapes, seq_len: int, dtype: str, gpu_bytes: float,
                        checkpointing: bool, padding_free: bool = False) -> Suggestion:
    """The largest power-of-two micro-batch whose estimate fits; gradient checkpointing is turned
    on only when even micro-batch 1 does not fit without it (what the OOM backoff does too)."""
    usable = gpu_bytes * GPU_USABLE_SHARE - GPU_RESERVE_BYTES
    for ckpt in ([checkpointing] if checkpointing else [False, True]):
        best = None
        size = 1
        while size <= MAX_SUGGESTED_MICRO_BATCH:
            need = static + sum(activation_bytes(shapes, size, seq_len, dtype, ckpt, padding_free).values())
            if need > usable:
                break
            best = (size, need)
            size *= 2
        if best:
            note = "fits" if ckpt == checkpointing else "fits only with gradient checkpointing"
            return Suggestion(best[0], ckpt, usable, best[1], note)
    return Suggestion(None, True, usable, None, "does not fit even at micro-batch 1 with gradient checkpointing")


def auto_micro_batch(model: Any, *, total: int, seq_len: int, device: Any, dtype: str, checkpointing: bool,
                     padding_free: bool = False) -> tuple[int, str]:
    """`per_device_train_batch_size: auto` at the start of training: the estimator's suggestion
    for this device (weights already loaded, so their real size counts), lowered to a power of
    two dividing `total` so the effective batch stays exact. On CPU: 8 (documented fallback:
    host memory is shared and swaps rather than failing, and larger CPU batches do not run faster)."""
    import torch

    if device.type != "cuda":
        wanted, reason = CPU_AUTO_MICRO_BATCH, "CPU fallback"
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        static = torch.cuda.memory_allocated(device) + 3 * trainable * 4  # + fp32 gradients and AdamW moments
        gpu = torch.cuda.get_device_properties(device).total_memory
        suggestion = suggest_micro_batch(static, model_shapes(model.config, None), seq_len, dtype, gpu, checkpointing, padding_free)
        wanted = suggestion.micro_batch or 1
        reason = f"estimate for {gpu / GB:.1f} GB: {suggestion.note}"
    size = 1
    while size * 2 <= min(wanted, total) and total % (size * 2) == 0:
        size *= 2
    return size, reason


# ----------------------------------------------------------------------------------------------
# Putting it together


def load_pipeline_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"config {path}: cannot read it ({exc})") from None
    try:
        raw = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"config {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict) or "source" not in raw["model"]:
        raise InvalidInputError(f"config {path}: model.source: required")
    return raw


def estimate(raw: dict[str, Any], gpu_memory: str | None = None, model_dir: str | None = None) -> dict[str, Any]:
    train = raw.get("train") or {}
    lora = {**DEFAULTS["lora"], **(train.get("lora") or {})}
    dtype = train.get("dtype", DEFAULTS["dtype"])
    if dtype not in BYTES:
        raise InvalidInputError(f"train.dtype: expected one of {', '.join(BYTES)}, got {dtype!r}")
    micro_batch = train.get("per_device_train_batch_size", DEFAULTS["per_device_train_batch_size"])
    checkpointing = bool(train.get("gradient_checkpointing", DEFAULTS["gradient_checkpointing"]))
    padding_free = bool(train.get("padding_free", False))
    seq_len = int((raw.get("tokenize") or {}).get("max_length", DEFAULTS["max_length"]))
    edge = (raw.get("format") or {}).get("image_longest_edge")
    max_pixels = (raw.get("format") or {}).get("max_pixels")

    config, found_at = find_model_config(raw["model"]["source"], model_dir)
    counts = count_parameters(config, lora)
    rounded = round_like_the_blog(counts.total)
    shapes = model_shapes(config, edge, max_pixels)
    static = trainer_rows(counts, dtype)
    result: dict[str, Any] = {
        "model": {"source": raw["model"]["source"], "config": found_at, "architecture": counts.architecture},
        "parameters": {"total": counts.total, "rounded_as_in_blog": rounded, "lora_trainable": counts.lora_trainable,
                       "lora": lora},
        "blog_tables_rounded": {k: _with_total(v) for k, v in blog_rows(rounded, counts.lora_trainable).items()},
        "blog_tables_exact": {k: _with_total(v) for k, v in blog_rows(counts.total, counts.lora_trainable).items()},
        "this_trainer": _with_total(static),
        "shapes": asdict(shapes),
        "settings": {"dtype": dtype, "micro_batch": micro_batch, "max_length": seq_len,
                     "gradient_checkpointing": checkpointing, "padding_free": padding_free,
                     "image_longest_edge": edge, "max_pixels": max_pixels},
    }
    if isinstance(micro_batch, int):
        act = activation_bytes(shapes, micro_batch, seq_len, dtype, checkpointing, padding_free)
        result["activations"] = _with_total(act)
        result["this_trainer_with_activations_bytes"] = result["this_trainer"]["total"] + result["activations"]["total"]
    if gpu_memory:
        suggestion = suggest_micro_batch(sum(static.values()), shapes, seq_len, dtype, parse_memory(gpu_memory), checkpointing, padding_free)
        result["suggestion"] = {"gpu_memory": gpu_memory, **asdict(suggestion)}
    return result


def _with_total(rows: dict[str, float]) -> dict[str, Any]:
    return {"rows": rows, "total": sum(rows.values())}


def render(result: dict[str, Any]) -> str:
    p = result["parameters"]
    gb = lambda b: f"{b / GB:,.2f} GB"  # noqa: E731
    lines = [
        f"model: {result['model']['architecture']} ({result['model']['config']})",
        f"parameters: {p['total']:,} exactly (the blog rounds this to {p['rounded_as_in_blog']:,.0f});"
        f" LoRA r={p['lora']['r']} on {p['lora']['target_modules']}: {p['lora_trainable']:,} trainable",
        "",
        "The seed's table (HF blog 'DPO for VLMs'): weights + reference copy + gradients + AdamW moments,",
        "with the parameter count rounded as the blog does (exact count in brackets):",
    ]
    for name in result["blog_tables_rounded"]:
        rounded, exact = result["blog_tables_rounded"][name], result["blog_tables_exact"][name]
        lines.append(f"  {name}:")
        for row in rounded["rows"]:
            lines.append(f"    {row:<38} {gb(rounded['rows'][row]):>12}   [{gb(exact['rows'][row])}]")
        lines.append(f"    {'total':<38} {gb(rounded['total']):>12}   [{gb(exact['total'])}]")
    t = result["this_trainer"]
    s = result["settings"]
    lines += ["", f"This trainer (LoRA, {s['dtype']} base; the reference is the base with adapters disabled):"]
    for row, value in t["rows"].items():
        lines.append(f"    {row:<52} {gb(value):>12}")
    lines.append(f"    {'total before activations':<52} {gb(t['total']):>12}")
    if "activations" in result:
        a = result["activations"]
        rows = "padding-free: each pair's prompt and image once" if s["padding_free"] else "x2 rows: chosen + rejected"
        lines += ["", f"Activations, micro-batch {s['micro_batch']} ({rows}), max_length {s['max_length']},"
                      f" {result['shapes']['patches_per_image']} patches per image,"
                      f" gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'} (first-order estimate):"]
        for row, value in a["rows"].items():
            lines.append(f"    {row:<52} {gb(value):>12}")
        lines.append(f"    {'total':<52} {gb(a['total']):>12}")
        lines.append(f"  estimated peak: {gb(result['this_trainer_with_activations_bytes'])}")
    if "suggestion" in result:
        sg = result["suggestion"]
        if sg["micro_batch"] is None:
            lines.append(f"\nOn {sg['gpu_memory']} ({gb(sg['usable_bytes'])} usable): {sg['note']}.")
        else:
            lines.append(
                f"\nOn {sg['gpu_memory']} ({gb(sg['usable_bytes'])} usable after a {gb(GPU_RESERVE_BYTES)} reserve and 10% headroom):"
                f" start with per_device_train_batch_size {sg['micro_batch']}"
                f"{' and gradient_checkpointing' if sg['gradient_checkpointing'] else ''} (estimated {gb(sg['needed_bytes'])}; {sg['note']})."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DPO memory estimate from the model config alone")
    parser.add_argument("--config", required=True, help="pipeline config (YAML or JSON)")
    parser.add_argument("--gpu-memory", help="suggest a micro-batch for this much GPU memory, e.g. 80GB")
    parser.add_argument("--model-dir", help="a folder holding the model's config.json (overrides model.source)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    args = parser.parse_args(argv)
    try:
        result = estimate(load_pipeline_config(args.config), args.gpu_memory, args.model_dir)
    except (InvalidInputError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

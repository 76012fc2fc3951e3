"""Train, evaluate, reference and export configurations: the JSON files the Node activities write
(CONTRACT.md).

These dataclasses are the one definition of that contract. Like TRL's DPOConfig, every field has
a doc, a unit, its bounds and a default; `python -m dpo_trainer.schema` turns them into
schemas/trainer-config.schema.json, which the Node side validates every config against before it
starts the trainer, and whose defaults (the seed recipe) the pipeline config takes as its own.
Cross-field checks run when the config is built. Parsing collects *every* problem (unknown key,
wrong type, value out of range) with its path before failing, so one run of the trainer tells the
user all they must fix.
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from .errors import InvalidInputError

# TRL 1.16 DPOConfig's loss types, in its order.
LossType = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]
# The loss types that read label_smoothing (TRL ignores it for the others; we refuse it there).
LabelSmoothingLossType = Literal["robust", "exo_pair", "aot", "aot_unpaired"]
LABEL_SMOOTHING_USERS: tuple[str, ...] = get_args(LabelSmoothingLossType)
SchedulerType = Literal["cosine", "linear", "constant"]
DType = Literal["float32", "bfloat16", "float16"]
# TRL's report_to integrations the trainer writes to (the pipeline config's 'none' / 'all' are
# resolved to a list of these before the trainer starts).
ReportTo = Literal["tensorboard", "mlflow", "wandb"]
# What the loop optimises: TRL DPOTrainer's preference loss, or TRL SFTTrainer's completion-only
# NLL on the chosen answers (supervised fine-tuning before DPO).
Objective = Literal["dpo", "sft"]
# TrainConfig fields only the DPO objective reads; objective sft refuses values other than their
# defaults, so a setting is never silently ignored.
DPO_ONLY_FIELDS: tuple[str, ...] = (
    "beta", "loss_type", "loss_weights", "label_smoothing", "discopop_tau", "ld_alpha", "use_weighting",
    "precompute_ref_log_probs", "ref_log_probs_files",
)


def doc(text: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: `doc`, and the bounds the parser checks and the schema states: `min`/`max`
    (inclusive), `gt`/`lt` (exclusive), `nonempty` (lists), `pattern` (strings, a regular
    expression matched in full, with `expected` saying in words what it accepts)."""
    return {"doc": text, **extra}


DEVICE_PATTERN = r"auto|cpu|cuda|cuda:[0-9]+"
DEVICE = {"pattern": DEVICE_PATTERN, "expected": "'auto', 'cpu', 'cuda' or 'cuda:N'"}


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter trained on the frozen base model (PEFT LoraConfig)."""

    r: int = field(default=16, metadata=doc("LoRA rank (dimensions)", min=1))
    alpha: float = field(default=32.0, metadata=doc("LoRA alpha; the update is scaled by alpha/r", gt=0))
    dropout: float = field(default=0.0, metadata=doc("dropout on the LoRA input (probability)", min=0, lt=1))
    target_modules: Union[str, list[str]] = field(
        default="all-linear",
        metadata=doc(
            "'all-linear' (every nn.Linear except the LM head: language model, vision tower and"
            " projector) or a list of module-name suffixes"
        ),
    )


@dataclass(frozen=True)
class TrainConfig:
    """`python -m dpo_trainer.train --config CONFIG.json`. The defaults are the seed recipe, which
    the pipeline config's train section shows users as its own defaults."""

    model_dir: str = field(metadata=doc("staged base model folder (absolute path)"))
    train_shards: list[str] = field(metadata=doc("token shard parquet files (absolute paths)", nonempty=True))
    output_dir: str = field(metadata=doc("checkpoints go to output_dir/checkpoints/step-XXXXXXXX/"))
    resume_from: str | None = field(default=None, metadata=doc("a complete checkpoint folder, or null"))
    # init_from: a fresh start loads these LoRA weights; ignored when resume_from is set.
    init_adapter: str | None = field(
        default=None, metadata=doc("PEFT adapter folder (adapter_model.safetensors) to start from, or null")
    )
    objective: Objective = field(
        default="dpo",
        metadata=doc(
            "'dpo': the preference loss (loss_type) against the reference; 'sft': TRL SFTTrainer's"
            " completion-only loss, the NLL of the chosen answers averaged over the step's assistant tokens"
            " (no reference, no rejected answers)"
        ),
    )
    merge_model: bool = field(
        default=False,
        metadata=doc(
            "also write the base model with the final adapter merged in (PEFT merge_and_unload) to"
            " output_dir/final/model, with the base's processor and tokenizer files: a model folder a later"
            " run can start from"
        ),
    )
    seed: int = field(default=42, metadata=doc("seeds LoRA init, data order (seed + epoch) and dropout"))
    epochs: int = field(default=1, metadata=doc("passes over the training data (epochs)", min=1))
    max_steps: int | None = field(
        default=None, metadata=doc("optimizer steps; overrides epochs when set", min=1)
    )
    per_device_train_batch_size: Union[int, Literal["auto"]] = field(
        default=2,
        metadata=doc(
            "preference pairs per forward pass (micro-batch, pairs), or 'auto': chosen at start from the"
            " device's memory by the estimator (dpo_trainer.estimate); on CPU, 8",
            min=1,
        ),
    )
    gradient_accumulation_steps: int = field(
        default=32, metadata=doc("micro-batches per optimizer step (count); derived when the micro-batch is 'auto'", min=1)
    )
    total_train_batch_size: int | None = field(
        default=None,
        metadata=doc(
            "pairs per optimizer step; required with per_device_train_batch_size 'auto' (the micro-batch"
            " then divides it), else optional and must equal micro-batch x accumulation",
            min=1,
        ),
    )
    learning_rate: float = field(default=5e-6, metadata=doc("peak AdamW learning rate", gt=0))
    lr_scheduler_type: SchedulerType = field(default="cosine", metadata=doc("decay after warmup"))
    warmup_ratio: float = field(
        default=0.0, metadata=doc("share of total steps spent in linear warmup (0..1)", min=0, lt=1)
    )
    weight_decay: float = field(default=0.0, metadata=doc("AdamW decoupled weight decay", min=0))
    max_grad_norm: float = field(
        default=1.0, metadata=doc("clip the global gradient L2 norm to this; 0 disables", min=0)
    )
    beta: float = field(default=0.1, metadata=doc("DPO beta: strength of the KL penalty to the reference", gt=0))
    loss_type: Union[LossType, list[LossType]] = field(
        default="sigmoid",
        metadata=doc(
            "preference loss (TRL's names), or a list of them summed with loss_weights (MPO: ['sigmoid',"
            " 'bco_pair', 'sft'] with [0.8, 0.2, 1.0])",
            nonempty=True,
        ),
    )
    loss_weights: list[float] | None = field(
        default=None,
        metadata=doc("one weight per loss_type entry (dimensionless); null: 1.0 each"),
    )
    label_smoothing: float = field(
        default=0.0,
        metadata=doc(
            "robust: assumed probability that a preference label is flipped, < 0.5; exo_pair: EXO's"
            " epsilon, required > 0 (paper: 1e-3); aot/aot_unpaired: smoothing of their logistic loss;"
            " must be 0 for the other loss types",
            min=0,
            lt=1,
        ),
    )
    discopop_tau: float = field(
        default=0.05,
        metadata=doc("DiscoPOP temperature of the logistic/exponential blend (loss_type discopop)", gt=0),
    )
    ld_alpha: float | None = field(
        default=None,
        metadata=doc(
            "LD-DPO: weight of the completion tokens past the shorter completion's length (0..1; 1 ="
            " plain DPO, 0 = ignore them); null: off",
            min=0,
            max=1,
        ),
    )
    use_weighting: bool = field(
        default=False,
        metadata=doc("WPO: weight each pair by its length-normalised sequence probabilities under the policy"),
    )
    lora: LoraSettings = field(default_factory=LoraSettings, metadata=doc("LoRA adapter settings"))
    dtype: DType = field(default="bfloat16", metadata=doc("base weights and autocast compute dtype"))
    gradient_checkpointing: bool = field(
        default=False, metadata=doc("recompute activations in backward to save memory")
    )
    padding_free: bool = field(
        default=False,
        metadata=doc(
            "pack each micro-batch's rows (prompt + chosen and prompt + rejected of every pair) into one"
            " sequence without padding tokens, for the policy and the reference forward: positions restart"
            " at 0 in each sample (M-RoPE families: each sample's own 3-D positions), attention stays within"
            " each sample, and the LM head runs only at the completion tokens. Same losses as padded batches"
            " (to float rounding); saves the work and activation memory padding costs. LLaVA, LLaVA-NeXT,"
            " Qwen2-VL, Qwen2.5-VL and Qwen3-VL; other families are refused at start"
        ),
    )
    fsdp: bool = field(
        default=False,
        metadata=doc(
            "with several processes (accelerate launch / torchrun), shard the model's weights, gradients and"
            " optimizer state over them with FSDP2 (torch fully_shard): one unit per language-model decoder"
            " layer plus the root (embeddings, vision tower, projector, head); the reference is the same"
            " sharded weights with the adapter off, or precompute_ref_log_probs. Same losses as one process"
            " (to float rounding); checkpoints are gathered unsharded onto rank 0 in the single-process"
            " format, so a run resumes at any world size. An out-of-memory error inside a sharded forward or"
            " backward ends the run instead of backing off (the other ranks are inside a collective). With"
            " one process: ignored"
        ),
    )
    checkpoint_every_steps: int = field(
        default=50, metadata=doc("write a checkpoint every N optimizer steps", min=1)
    )
    log_every_steps: int = field(default=1, metadata=doc("emit a `step` event every N optimizer steps", min=1))
    report_to: list[ReportTo] = field(
        default_factory=list,
        metadata=doc("experiment trackers every optimizer step's metrics go to (TRL's report_to names); []: none"),
    )
    logging_dir: str | None = field(
        default=None,
        metadata=doc("TensorBoard run directory (absolute path); null: output_dir/runs"),
    )
    run_name: str | None = field(default=None, metadata=doc("the run's name in the trackers (TRL's run_name)"))
    run_tags: list[str] = field(
        default_factory=list,
        metadata=doc("'key=value' lineage the trackers show beside the curves (run id, stage, config hash)"),
    )
    device: str = field(default="auto", metadata=doc("'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'", **DEVICE))
    preemption_grace_seconds: float = field(
        default=30.0, metadata=doc("seconds between SIGTERM and SIGKILL the parent allows", gt=0)
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata=doc(
            "TRL's switch: take the reference log-probs from ref_log_probs_files (written by"
            " `python -m dpo_trainer.reference`) instead of a reference forward pass per step"
        ),
    )
    ref_log_probs_files: list[str] = field(
        default_factory=list,
        metadata=doc("reference log-prob parquet files, each beside its manifest.json (absolute paths)"),
    )

    @property
    def effective_batch_size(self) -> int:
        """Preference pairs per optimizer step; what resume and OOM backoff must keep fixed."""
        if self.per_device_train_batch_size == "auto":
            assert self.total_train_batch_size is not None
            return self.total_train_batch_size
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def cross_field_problems(self) -> list[str]:
        problems: list[str] = []
        if self.per_device_train_batch_size == "auto":
            if self.total_train_batch_size is None:
                problems.append("total_train_batch_size: required when per_device_train_batch_size is 'auto'")
        elif self.total_train_batch_size is not None and self.total_train_batch_size != (
            self.per_device_train_batch_size * self.gradient_accumulation_steps
        ):
            problems.append(
                f"total_train_batch_size: {self.total_train_batch_size} is not per_device_train_batch_size x"
                f" gradient_accumulation_steps ({self.per_device_train_batch_size} x {self.gradient_accumulation_steps})"
            )
        if self.precompute_ref_log_probs and not self.ref_log_probs_files:
            problems.append("ref_log_probs_files: required when precompute_ref_log_probs is true")
        if self.ref_log_probs_files and not self.precompute_ref_log_probs:
            problems.append("ref_log_probs_files: given but precompute_ref_log_probs is false")
        problems += self.sft_problems() if self.objective == "sft" else self.loss_problems()
        problems += [f"run_tags[{i}]: {tag!r} is not 'key=value'" for i, tag in enumerate(self.run_tags) if not tag.partition("=")[0] or "=" not in tag]
        if len(set(self.report_to)) != len(self.report_to):
            problems.append(f"report_to: {self.report_to} names a tracker twice")
        return problems

    def sft_problems(self) -> list[str]:
        """DPO settings given to the sft objective, which would ignore them."""
        defaults = {f.name: (f.default_factory() if f.default is MISSING else f.default)  # type: ignore[misc]
                    for f in fields(self) if f.name in DPO_ONLY_FIELDS}
        return [
            f"{name}: a DPO setting; objective sft trains on the chosen answers alone and does not read it"
            f" (leave it at {defaults[name]!r})"
            for name in DPO_ONLY_FIELDS
            if getattr(self, name) != defaults[name]
        ]

    @property
    def loss_types(self) -> list[str]:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)

    def loss_problems(self) -> list[str]:
        """The loss combinations TRL's DPOConfig/DPOTrainer reject (or would fail on), plus the
        settings TRL silently ignores, which we refuse so they are never ignored."""
        problems: list[str] = []
        types = self.loss_types
        if self.loss_weights is not None and len(self.loss_weights) != len(types):
            problems.append(
                f"loss_weights: {len(self.loss_weights)} weights for {len(types)} loss types; give one per"
                " loss_type entry (as TRL requires)"
            )
        smoothed = [t for t in types if t in LABEL_SMOOTHING_USERS]
        if self.label_smoothing > 0 and not smoothed:
            problems.append(
                f"label_smoothing: must be 0 for loss_type {self.loss_type!r}; only"
                f" {', '.join(LABEL_SMOOTHING_USERS)} read it (TRL ignores it for the others)"
            )
        if "robust" in types and self.label_smoothing >= 0.5:
            problems.append(f"label_smoothing: must be < 0.5 with loss_type robust (a flip rate), got {self.label_smoothing}")
        if "exo_pair" in types and self.label_smoothing == 0:
            problems.append("label_smoothing: must be > 0 with loss_type exo_pair (EXO's epsilon; the paper uses 1e-3), as TRL requires")
        if self.use_weighting and [t for t in types if t in ("aot", "aot_unpaired")]:
            problems.append(
                "use_weighting: not available with loss_type aot or aot_unpaired, which sort the pairs and"
                " would misalign the per-pair weights (TRL refuses it too)"
            )
        if self.use_weighting and "sft" in types:
            # TRL 1.16 fails at the first step (an in-place product on its expanded sft loss).
            problems.append("use_weighting: not available with loss_type sft (TRL 1.16 fails on it)")
        if self.ld_alpha is not None and self.precompute_ref_log_probs:
            problems.append(
                "ld_alpha: not available with precompute_ref_log_probs (the precomputed reference"
                " log-probs are plain sums over the completion)"
            )
        return problems


@dataclass(frozen=True)
class EvalConfig:
    """`python -m dpo_trainer.evaluate --config CONFIG.json`."""

    model_dir: str = field(metadata=doc("base model folder (absolute path)"))
    shards: list[str] = field(metadata=doc("token shard parquet files to score", nonempty=True))
    adapter_dir: str | None = field(default=None, metadata=doc("PEFT adapter folder; null scores the base model"))
    batch_size: int = field(default=16, metadata=doc("preference pairs per forward pass", min=1))
    beta: float = field(default=0.1, metadata=doc("beta for the implicit reward", gt=0))
    device: str = field(default="auto", metadata=doc("'auto', 'cpu', 'cuda' or 'cuda:N'", **DEVICE))
    dtype: DType = field(default="float32", metadata=doc("weights and autocast compute dtype"))

    def cross_field_problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class PromptScoreConfig:
    """`python -m dpo_trainer.score_prompts --config CONFIG.json`."""

    model_dir: str = field(metadata=doc("base model folder (absolute path)"))
    requests: str = field(metadata=doc("JSON file of prompts to answer (CONTRACT.md, score_prompts)"))
    output: str = field(metadata=doc("JSON file the answers are written to"))
    adapter_dir: str | None = field(default=None, metadata=doc("PEFT adapter folder; null answers with the base model"))
    device: str = field(default="auto", metadata=doc("'auto', 'cpu', 'cuda' or 'cuda:N'", **DEVICE))
    dtype: DType = field(default="float32", metadata=doc("weights and autocast compute dtype"))

    def cross_field_problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class ReferenceConfig:
    """`python -m dpo_trainer.reference --config CONFIG.json`."""

    model_dir: str = field(metadata=doc("base model folder (absolute path), the reference of the DPO run"))
    shards: list[str] = field(metadata=doc("token shard parquet files to score", nonempty=True))
    output_dir: str = field(metadata=doc("gets ref_logps.parquet and manifest.json"))
    batch_size: int = field(default=8, metadata=doc("preference pairs per forward pass", min=1))
    device: str = field(default="auto", metadata=doc("'auto', 'cpu', 'cuda' or 'cuda:N'", **DEVICE))
    dtype: DType = field(default="float32", metadata=doc("weights and autocast compute dtype; use the train run's"))
    padding_free: bool = field(
        default=False,
        metadata=doc("score each batch as one packed sequence without padding (TrainConfig.padding_free); same log-probs")
    )

    def cross_field_problems(self) -> list[str]:
        return []


# Model families (config.json `model_type`) whose scoring graph the ONNX exporter does not build,
# with the family's name and why. Exporting them anyway would score with the wrong positions or
# mask. The exporter refuses them, and the pipeline's evaluate stage scores them with PyTorch
# instead (generated into contracts/trainerContract.generated.ts for it).
_MROPE = "its M-RoPE position ids depend on each image's grid, which the exported scoring graph does not compute"
ONNX_UNEXPORTABLE_MODEL_TYPES: dict[str, dict[str, str]] = {
    "qwen2_vl": {"family": "Qwen2-VL", "reason": _MROPE},
    "qwen2_5_vl": {"family": "Qwen2.5-VL", "reason": _MROPE},
    "qwen3_vl": {"family": "Qwen3-VL", "reason": _MROPE},
    "llava_next": {"family": "LLaVA-NeXT", "reason": "its anyres tiles, their unpadding and the row newlines are not in the exported scoring graph"},
    # Gemma 3's text model (sliding-window and global layers, q/k norms, two rotary bases) is not
    # the graph's, and its image tokens attend to each other bidirectionally (token_type_ids).
    "gemma3": {
        "family": "Gemma 3",
        "reason": "its image tokens attend to each other bidirectionally and its sliding-window layers are not in the"
        " exported scoring graph, whose mask is causal",
    },
}


@dataclass(frozen=True)
class ExportConfig:
    """`python -m dpo_trainer.export --config CONFIG.json`."""

    model_dir: str = field(metadata=doc("base model folder (absolute path)"))
    out_dir: str = field(metadata=doc("folder the ONNX export is written to (created; must not hold an export)"))
    adapter_dir: str | None = field(default=None, metadata=doc("PEFT adapter folder merged before export; null exports the base"))

    def cross_field_problems(self) -> list[str]:
        return []


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if tp is float:
        return "number"
    if tp is int:
        return "integer"
    if tp is str:
        return "string"
    if tp is bool:
        return "boolean"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widened to float) or record a problem."""
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        problems.append(f"{path}: expected one of {_type_name(tp)}, got {value!r}")
        return None
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            attempt: list[str] = []
            converted = _convert(value, option, path, attempt)
            if not attempt:
                return converted
        lists = [option for option in get_args(tp) if get_origin(option) is list]
        if isinstance(value, list) and len(lists) == 1:
            # A list that fails the one list option: name the bad items (`loss_type[1]: ...`).
            _convert(value, lists[0], path, problems)
            return None
        problems.append(f"{path}: expected {_type_name(tp)}, got {json.dumps(value)}")
        return None
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, list):
            return [_convert(v, get_args(tp)[0], f"{path}[{i}]", problems) for i, v in enumerate(value)]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        # JSON true/false are not numbers, even though Python's bool subclasses int.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        if isinstance(value, dict):
            return _build(tp, value, f"{path}.", problems)
    problems.append(f"{path}: expected {_type_name(tp)}, got {json.dumps(value)}")
    return None


def _check_range(value: Any, meta: typing.Mapping[str, Any], path: str, problems: list[str]) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in meta and value < meta["min"]:
            problems.append(f"{path}: must be >= {meta['min']}, got {value}")
        if "max" in meta and value > meta["max"]:
            problems.append(f"{path}: must be <= {meta['max']}, got {value}")
        if "gt" in meta and value <= meta["gt"]:
            problems.append(f"{path}: must be > {meta['gt']}, got {value}")
        if "lt" in meta and value >= meta["lt"]:
            problems.append(f"{path}: must be < {meta['lt']}, got {value}")
    if meta.get("nonempty") and isinstance(value, list) and not value:
        problems.append(f"{path}: must not be empty")
    if "pattern" in meta and isinstance(value, str) and not re.fullmatch(meta["pattern"], value):
        problems.append(f"{path}: expected {meta['expected']}, got {value!r}")


def _build(cls: type, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            problems.append(f"{prefix}{key}: unknown key (valid keys: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                problems.append(f"{path}: required ({f.metadata.get('doc', '')})")
            continue
        before = len(problems)
        value = _convert(raw[f.name], hints[f.name], path, problems)
        if len(problems) == before:
            _check_range(value, f.metadata, path, problems)
            values[f.name] = value
    if any(p.startswith(prefix) for p in problems) and prefix:
        return None
    try:
        return cls(**values)
    except TypeError:
        return None  # missing required fields, already reported


def parse_config(cls: type, raw: Any, source: str = "config") -> Any:
    """Build a TrainConfig/EvalConfig from parsed JSON or raise InvalidInputError listing every problem."""
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    config = _build(cls, raw, "", problems)
    if config is not None and not problems:
        problems.extend(config.cross_field_problems())
    if problems:
        raise InvalidInputError([f"{source}: {p}" for p in problems])
    return config


def load_config(cls: type, path: str | Path) -> Any:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"config file {path} is not valid JSON: {exc}") from None
    return parse_config(cls, raw, source=str(path))

"""DPO (or supervised fine-tuning) + LoRA training, spawned by the dpo-gpu worker (CONTRACT.md).

    python -m dpo_trainer.train --config CONFIG.json

Reads top to bottom like nanoGPT's train.py: load data and model, restore state if resuming
(the same code path as a fresh start), then one optimizer step per loop iteration; `objective`
picks DPO's preference loss or SFT's completion-only NLL, everything else is shared. Unlike
nanoGPT, checkpoints hold RNG and data-cursor state and are written atomically, so a run killed
at any moment resumes onto exactly the samples and numbers the uninterrupted run would have
produced.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from transformers import get_scheduler

from . import checkpoint as ckpt
from . import fsdp, packing
from .cli import run_command
from .config import TrainConfig, load_config
from .data import (
    DataCursor,
    PixelCache,
    PreferenceDataset,
    collate,
    load_shards,
    steps_until_epoch,
    validate_against_model,
)
from .errors import ExitCode, InvalidInputError, OutOfMemoryGaveUp
from .events import claim_stdout, emit, log, mute
from .estimate import auto_micro_batch
from .distributed import Distributed, init_distributed
from .control import ControlFile
from .faults import FaultHooks
from .losses import (
    METRIC_NAMES,
    LossSettings,
    PairLogps,
    coupled_step,
    metric_sums,
    pair_losses,
    sequence_logps,
    surrogate,
    wpo_weights,
)
from .modeling import (
    DTYPES,
    check_dtype_supported,
    attach_lora,
    autocast,
    completion_token_logps,
    completion_token_stats,
    enable_gradient_checkpointing,
    load_base_model,
    save_merged_model,
    resolve_device,
)
from .preemption import PreemptionFlag, PreemptionRequested
from .reference import ReferenceLogps, load_reference_logps
from .tracking import Trackers, start_trackers
from .watchdog import ParentWatchdog

STATE_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# State that a checkpoint carries besides the adapter weights


@dataclass
class Progress:
    step: int = 0  # completed optimizer steps
    cursor: DataCursor = field(default_factory=DataCursor)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per step


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # The numpy key array becomes a list so torch.load(weights_only=True) can read it back.
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_fingerprint(config: TrainConfig, dataset: PreferenceDataset, step_samples: int) -> dict[str, Any]:
    """Settings a resumed run must share with the run that wrote the checkpoint: they decide
    which samples each step sees and what the optimizer does with them. The micro-batch split is
    deliberately absent -- halving it and doubling accumulation is allowed."""
    return {
        "seed": config.seed,
        # null for DPO, so checkpoints written before the sft objective existed resume.
        "objective": config.objective if config.objective != "dpo" else None,
        "epochs": config.epochs,
        "max_steps": config.max_steps,
        "effective_batch_size": step_samples,  # pairs per optimizer step over all processes
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler_type,
        "warmup_ratio": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "beta": config.beta,
        "loss_type": config.loss_type,
        "loss_weights": config.loss_weights,
        "label_smoothing": config.label_smoothing,
        # null when off or unused, so checkpoints written before these options existed resume.
        "discopop_tau": config.discopop_tau if "discopop" in config.loss_types else None,
        "ld_alpha": config.ld_alpha,
        "use_weighting": config.use_weighting or None,
        "lora": asdict(config.lora),
        "dataset_samples": len(dataset),
        "dataset_sha256": dataset.fingerprint(),
    }


def safetensors_device(device: torch.device) -> str:
    """The device name safetensors accepts: accelerate names a CPU rank's device "cpu:0", which it
    refuses (the load copies the weights onto the model's own device anyway)."""
    return "cpu" if device.type == "cpu" else str(device)


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The trained parameters, as the optimizer holds them (sharded ones under fsdp)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def load_init_adapter(model: Any, folder: Path, device: torch.device) -> None:
    """init_from: start from an earlier run's LoRA weights instead of PEFT's fresh init.
    The reference model stays the base model (adapter disabled)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise InvalidInputError(f"init_adapter: {weights_file} does not exist")
    result = set_peft_model_state_dict(model, load_file(weights_file, device=safetensors_device(device)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise InvalidInputError(f"init_adapter: {folder} does not fit the model and lora settings (missing {missing[:3]},"
                                f" unexpected {list(result.unexpected_keys)[:3]})")
    log(f"initialized the adapter from {folder}")


@dataclass
class OpenedCheckpoint:
    folder: Path
    files: list[str]
    state: dict[str, Any]  # trainer_state.pt


def open_checkpoint(folder: Path, fingerprint: dict[str, Any], model: Any, device: torch.device) -> OpenedCheckpoint:
    """Verify a checkpoint, check it belongs to this run, and load its adapter into the model --
    before the model is sharded (fsdp.py), so the weights load the same at every world size."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    manifest = ckpt.verify_folder(folder)
    state = ckpt.load_trainer_state(folder)
    changed = [k for k, v in fingerprint.items() if state["fingerprint"].get(k) != v]
    if changed:
        raise InvalidInputError(
            [
                f"resume_from: {k} differs from the checkpoint's run"
                f" ({state['fingerprint'].get(k)!r} there, {fingerprint[k]!r} now)"
                for k in changed
            ]
            + ["keep these equal to resume (the micro-batch split may change), or start a fresh run"]
        )
    weights = load_file(folder / ckpt.ADAPTER_DIR / "adapter_model.safetensors", device=safetensors_device(device))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise InvalidInputError(f"resume_from: {folder} adapter does not fit the model (missing {missing[:3]},"
                                f" unexpected {list(result.unexpected_keys)[:3]})")
    return OpenedCheckpoint(folder, [e["path"] for e in manifest["files"]], state)


def restore_checkpoint(
    opened: OpenedCheckpoint, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, dist: Distributed, parameter_names: list[str],
) -> tuple[Progress, ckpt.CheckpointRef]:
    """Load the rest of an opened checkpoint into the freshly built objects; RNG states are
    restored last, because building the model and optimizer may have drawn random numbers."""
    state, folder = opened.state, opened.folder
    if dist.fsdp:
        fsdp.load_optimizer_state(model, optimizer, state["optimizer"], parameter_names)
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["grad_scaler"])
    progress = Progress(state["step"], DataCursor(**state["cursor"]), list(state["history"]))
    restore_rng(state["rng"])
    log(f"resumed from {folder} at step {progress.step}")
    return progress, ckpt.CheckpointRef(progress.step, folder, opened.files)


# ----------------------------------------------------------------------------------------------
# One optimizer step


class StepOutOfMemory(Exception):
    """The step ran out of memory; raised after the except block so its tensors are freed."""


@dataclass(kw_only=True)
class StepContext:
    """What every optimizer step needs, built once per process (keyword arguments only)."""

    model: Any
    dataset: PreferenceDataset
    pixels: PixelCache | None
    pad_token_id: int
    device: torch.device
    dtype: torch.dtype
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    faults: FaultHooks
    preemption: PreemptionFlag
    reference: ReferenceLogps | None = None  # precomputed: no reference forward pass
    dist: Distributed = field(default_factory=Distributed)


def pair_logps(ctx: StepContext, batch: Any, micro_indices: list[int], settings: LossSettings) -> PairLogps:
    """Policy and reference log-probs of one micro-batch, as TRL's _compute_loss derives them
    (LD-DPO weighting and WPO weights included); the policy's carry the graph when grad is on."""
    with autocast(ctx.device, ctx.dtype):
        # Reference first, without a graph: its activations are gone before the policy forward
        # keeps its own for backward, which lowers peak memory.
        if ctx.reference is not None:
            ref_logps = ctx.reference.for_rows(micro_indices).to(ctx.device)
        else:
            with torch.no_grad(), fsdp.adapter_disabled(ctx.model, optimizer_params(ctx.optimizer)):
                ref_tokens, ref_mask, _ = completion_token_logps(ctx.model, batch, padding_free=ctx.config.padding_free)
                ref_logps = sequence_logps(ref_tokens, ref_mask, settings.ld_alpha).logps
        per_token, mask, log_sum_sq = completion_token_logps(
            ctx.model, batch, sum_sq_probs=settings.use_weighting, padding_free=ctx.config.padding_free
        )
    policy = sequence_logps(per_token, mask, settings.ld_alpha)
    weights = wpo_weights(per_token, log_sum_sq, mask) if log_sum_sq is not None else None
    return PairLogps.from_rows(policy, ref_logps, weights)


def scored_chosen_tokens(dataset: PreferenceDataset, indices: list[int]) -> int:
    """Completion tokens of y_w the loss scores in these pairs (collate's shifted completion
    mask: the first sequence token has no prediction): the sft term's denominator."""
    table = dataset.table.select(["prompt_input_ids", "chosen_input_ids"]).take(pa.array(indices, type=pa.int64()))
    prompts = pc.list_value_length(table.column("prompt_input_ids")).to_pylist()
    chosen = pc.list_value_length(table.column("chosen_input_ids")).to_pylist()
    return sum(c if p > 0 else max(c - 1, 0) for p, c in zip(prompts, chosen))


def optimizer_step(ctx: StepContext, indices: list[int], *, micro_batch: int, step_pairs: int | None = None) -> dict[str, float]:
    """Accumulate gradients over micro-batches of `indices`, then apply one optimizer step.

    The loss is the objective's loss with the step as its batch, accumulated so that the update
    does not depend on how the step is split into micro-batches -- which is what makes OOM
    backoff and resume with a halved micro-batch land on the same numbers. With several
    processes `indices` is this rank's share and `step_pairs` the step's pair count over all
    ranks; gradients and metrics are summed across ranks after the local accumulation
    (distributed.py).
    """
    config = ctx.config
    accumulate = accumulate_sft if config.objective == "sft" else accumulate_dpo
    out_of_memory = False
    try:
        sums, tokens, normaliser = accumulate(ctx, indices, micro_batch=micro_batch, step_pairs=step_pairs or len(indices))
    except torch.OutOfMemoryError as exc:
        log(f"out of memory with micro-batch {micro_batch}: {exc}")
        if ctx.dist.fsdp:
            # The other ranks may be waiting inside this forward's all-gathers or this backward's
            # reduce-scatters, where no agreement can reach them: end the run (the launcher stops
            # the other ranks) with the out-of-memory exit, so the workflow replans.
            raise OutOfMemoryGaveUp([f"micro_batch={micro_batch} with fsdp (no in-process backoff across shards)"]) from None
        out_of_memory = True
    if ctx.dist.any(out_of_memory):  # every rank backs off together
        raise StepOutOfMemory()

    params = optimizer_params(ctx.optimizer)
    ctx.dist.sum_gradients(params)
    totals = ctx.dist.sum({**sums, "_tokens": float(tokens)})
    tokens = int(totals.pop("_tokens"))
    sums = totals
    ctx.scaler.unscale_(ctx.optimizer)
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    grad_norm = fsdp.full_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))
    learning_rate = ctx.scheduler.get_last_lr()[0]  # the rate this step uses
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    metrics = {name: value / normaliser for name, value in sums.items()}
    metrics["learning_rate"] = learning_rate
    metrics["grad_norm"] = grad_norm
    metrics["_tokens"] = tokens
    return metrics


def accumulate_dpo(ctx: StepContext, indices: list[int], *, micro_batch: int, step_pairs: int) -> tuple[dict[str, float], int, float]:
    """DPO: TRL's loss with the step as its batch -- the sum of each micro-batch's per-pair losses
    divided by the step's pair count. A loss that sorts the step's pairs (aot) first scores the
    whole step without a graph, then back-propagates each micro-batch's share of the step loss's
    gradient (losses.coupled_step). Returns metric sums over this rank's pairs, its non-padding
    tokens, and the step's pair count (what the sums are divided by)."""
    settings = LossSettings.from_config(ctx.config)
    n = step_pairs
    sums = dict.fromkeys(METRIC_NAMES, 0.0)
    tokens = 0
    chosen_tokens: float | None = None
    if "sft" in settings.loss_types:
        chosen_tokens = ctx.dist.sum({"tokens": float(scored_chosen_tokens(ctx.dataset, indices))})["tokens"]
    starts = range(0, len(indices), micro_batch)

    def micro_batch_at(start: int) -> tuple[list[int], Any]:
        micro_indices = indices[start : start + micro_batch]
        batch = collate(ctx.dataset.rows(micro_indices), ctx.pad_token_id, ctx.pixels).to(ctx.device)
        ctx.faults.before_forward(batch.pairs)
        return micro_indices, batch

    coupled = None
    if settings.step_coupled:
        # The graph-carrying pass must see the same dropout masks: it replays this pass's RNG.
        cuda = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            local = PairLogps.cat([pair_logps(ctx, b, m, settings) for m, b in map(micro_batch_at, starts)])
        whole = PairLogps(*(None if v is None else ctx.dist.gather_shards(v, n) for v in vars(local).values()))
        step = coupled_step(whole, settings)
        mine = slice(ctx.dist.rank, None, ctx.dist.world_size)
        coupled = [getattr(step, name)[mine] for name in ("losses", "d_chosen", "d_rejected", "d_chosen_token_sums")]
    for start in starts:
        micro_indices, batch = micro_batch_at(start)
        p = pair_logps(ctx, batch, micro_indices, settings)
        if coupled is None:
            losses = pair_losses(p, settings, step_pairs=n, step_chosen_tokens=chosen_tokens)
            ctx.scaler.scale(losses.sum() / n).backward()
        else:
            part = slice(start, start + batch.pairs)
            losses, d_chosen, d_rejected, d_sums = (t[part] for t in coupled)
            ctx.scaler.scale(surrogate(p, d_chosen, d_rejected, d_sums)).backward()
        for name, value in metric_sums(p, losses, settings.beta).items():
            sums[name] += value
        tokens += batch.tokens
        stop_between_micro_batches(ctx, start + micro_batch < len(indices))
    return sums, tokens, float(n)


# TRL SFTTrainer's per-step metrics besides learning_rate, grad_norm and num_tokens (train.py
# adds those): means over the step's completion tokens.
SFT_TOKEN_METRICS = ("loss", "mean_token_accuracy", "entropy")


def accumulate_sft(ctx: StepContext, indices: list[int], *, micro_batch: int, step_pairs: int) -> tuple[dict[str, float], int, float]:  # noqa: ARG001
    """Supervised fine-tuning on the chosen answers: TRL SFTTrainer's completion-only loss
    (assistant_only_loss / completion_only_loss), -sum log p(assistant token) / the number of
    assistant tokens, with the optimizer step as the batch: each micro-batch's NLL sum is divided
    by the whole step's token count (SFTTrainer's num_items_in_batch under gradient
    accumulation), so the update does not depend on the micro-batch split. Prompt tokens (image
    tokens included) are context only. mean_token_accuracy and entropy are token-weighted over
    the step, which is SFTTrainer's value for a step of one micro-batch. Returns the sums, the
    non-padding tokens of the prompt + chosen rows (SFTTrainer's num_tokens increment) and the
    step's completion token count."""
    step_tokens = ctx.dist.sum({"tokens": float(scored_chosen_tokens(ctx.dataset, indices))})["tokens"]
    denominator = max(step_tokens, 1.0)  # SFTTrainer clamps too: a step without tokens is a zero loss
    sums = dict.fromkeys(SFT_TOKEN_METRICS, 0.0)
    tokens = 0
    for start in range(0, len(indices), micro_batch):
        micro_indices = indices[start : start + micro_batch]
        batch = collate(ctx.dataset.rows(micro_indices), ctx.pad_token_id, ctx.pixels, chosen_only=True).to(ctx.device)
        ctx.faults.before_forward(batch.pairs)
        with autocast(ctx.device, ctx.dtype):
            stats = completion_token_stats(ctx.model, batch, padding_free=ctx.config.padding_free)
        nll = -stats.log_probs.sum()
        ctx.scaler.scale(nll / denominator).backward()
        sums["loss"] += nll.detach().item()
        sums["mean_token_accuracy"] += float(stats.is_top1.sum())
        sums["entropy"] += float(stats.entropy.sum())
        tokens += batch.tokens
        stop_between_micro_batches(ctx, start + micro_batch < len(indices))
    return sums, tokens, denominator


def stop_between_micro_batches(ctx: StepContext, more: bool) -> None:
    # Between micro-batches only in a single process: ranks agree at step boundaries.
    if more and ctx.dist.world_size == 1 and ctx.preemption.requested:
        raise PreemptionRequested()


def free_memory(ctx: StepContext) -> None:
    ctx.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------
# The run


def train(config: TrainConfig, preemption: PreemptionFlag) -> int:
    dist = init_distributed(config.device)  # accelerate launch / torchrun: WORLD_SIZE > 1
    dist.fsdp = config.fsdp and dist.world_size > 1
    if not dist.is_main:
        mute()
    if dist.fsdp and config.merge_model:
        raise InvalidInputError("merge_model: not available with fsdp and several processes (the merge needs the"
                                " whole model in one process); merge the final adapter in a later single-process run")
    faults = FaultHooks.from_env()
    control = ControlFile.from_env()
    device = dist.device or resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    check_dtype_supported(device, config.dtype)
    output_dir = Path(config.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        ckpt.remove_stale_temporaries(output_dir)
    dist.barrier()

    # -- data and model ------------------------------------------------------------------------
    dataset = load_shards(config.train_shards)
    if config.padding_free:
        packing.check_family(config.model_dir)  # before the weights load
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)  # seeds CUDA too; LoRA init below draws from it
    loaded = load_base_model(config.model_dir, dtype, device)
    validate_against_model(dataset, loaded.spec)
    reference = (
        load_reference_logps(config.ref_log_probs_files, dataset, config.model_dir, config.dtype)
        if config.precompute_ref_log_probs
        else None
    )
    model = attach_lora(loaded.model, config.lora)
    if config.padding_free:
        packing.enable(model)
    if config.init_adapter and not config.resume_from:
        load_init_adapter(model, Path(config.init_adapter), device)  # init_from
    model.train()
    gradient_checkpointing = config.gradient_checkpointing
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    # Pairs per optimizer step over all processes: per-device micro-batch x accumulation x world
    # size (as in transformers), or total_train_batch_size with an 'auto' micro-batch.
    step_samples = config.effective_batch_size * (1 if config.per_device_train_batch_size == "auto" else dist.world_size)
    if step_samples % dist.world_size:
        raise InvalidInputError(
            f"total_train_batch_size: {step_samples} does not split evenly over {dist.world_size} processes"
        )
    total_steps = config.max_steps or steps_until_epoch(DataCursor(), len(dataset), step_samples, config.epochs)
    fingerprint = run_fingerprint(config, dataset, step_samples)
    progress = Progress()

    # -- resume: the same objects as a fresh start, overwritten with the checkpoint's state ------
    opened = open_checkpoint(Path(config.resume_from).resolve(), fingerprint, model, device) if config.resume_from else None
    if dist.fsdp:
        fsdp.shard_model(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    parameter_names = fsdp.parameter_names(model, optimizer) if dist.fsdp else []
    scheduler = get_scheduler(
        {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[config.lr_scheduler_type],
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # Loss scaling only matters for float16, whose small exponent range underflows gradients.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    last_checkpoint: ckpt.CheckpointRef | None = None
    if opened is not None:
        progress, last_checkpoint = restore_checkpoint(opened, model, optimizer, scheduler, scaler, dist, parameter_names)

    newer = [ref for ref in ckpt.complete_checkpoints(output_dir) if ref.step > progress.step]
    if newer:
        raise InvalidInputError(
            f"output_dir: {newer[-1].path} is newer than the start step {progress.step}; set resume_from"
            " to it, or use an empty output_dir (stored checkpoints are never overwritten)"
        )

    # Rank 0 reports (metrics are summed across ranks already); what earlier attempts logged past
    # the start step is purged (tracking.py).
    trackers = start_trackers(config, output_dir, progress.step) if dist.is_main else Trackers()

    def trainer_state(rng: dict[str, Any], optimizer_state: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "step": progress.step,
            "cursor": asdict(progress.cursor),
            "epoch": progress.cursor.epoch_progress(len(dataset)),
            "samples_seen": sum(entry["samples"] for entry in progress.history),
            "fingerprint": fingerprint,
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "grad_scaler": scaler.state_dict(),
            "rng": rng,
            "history": progress.history,
        }

    def save(rng: dict[str, Any]) -> ckpt.CheckpointRef:
        # Rank 0 writes (the adapter and optimizer state are identical on every rank; sharded,
        # every rank first takes part in gathering them unsharded onto rank 0).
        weights = fsdp.trainable_state(model) if dist.fsdp else None
        optimizer_state = fsdp.optimizer_state(model, optimizer, parameter_names) if dist.fsdp else optimizer.state_dict()
        if dist.is_main:
            ref = ckpt.save_checkpoint(output_dir, progress.step, model, trainer_state(rng, optimizer_state), weights)
            trackers.flush()  # the worker uploads the event files with the checkpoint
            emit("checkpoint_saved", step=ref.step, path=str(ref.path), files=ref.files, manifest=ckpt.MANIFEST)
        else:
            ref = ckpt.CheckpointRef(progress.step, output_dir / "checkpoints" / ckpt.step_folder_name(progress.step), [])
        dist.barrier()
        return ref

    micro_batch = config.per_device_train_batch_size
    rank_samples = step_samples // dist.world_size  # each rank's share of a step
    if micro_batch == "auto":
        micro_batch, reason = auto_micro_batch(
            model,
            total=rank_samples,
            seq_len=dataset.max_sequence_length(),
            device=device,
            dtype=config.dtype,
            checkpointing=gradient_checkpointing,
            padding_free=config.padding_free,
        )
        log(f"per_device_train_batch_size auto -> {micro_batch} ({reason})")
    ctx = StepContext(
        model=model,
        dataset=dataset,
        pixels=PixelCache(loaded.image_processor, loaded.spec.image_token_id) if loaded.image_processor else None,
        pad_token_id=loaded.spec.pad_token_id,
        device=device,
        dtype=dtype,
        config=config,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        faults=faults,
        preemption=preemption,
        reference=reference,
        dist=dist,
    )
    emit(
        "started",
        total_steps=total_steps,
        start_step=progress.step,
        samples=len(dataset),
        world_size=dist.world_size,
        device=str(device),
        dtype=config.dtype,
        micro_batch=micro_batch,
        grad_accum=math.ceil(rank_samples / micro_batch),
    )

    # -- the loop: one optimizer step per iteration ---------------------------------------------
    oom_attempts: list[str] = []
    last_metrics: dict[str, float] = {}
    warned_slow = False
    while progress.step < total_steps:
        rng_at_step_start = capture_rng()
        if dist.any(preemption.requested):
            return preempt(progress.step, last_checkpoint, save, rng_at_step_start, trackers)
        # The worker's control file (control.py): pause here, between steps, or end a segment.
        if control.poll().paused:
            if progress.step > 0 and (last_checkpoint is None or last_checkpoint.step != progress.step):
                last_checkpoint = save(rng_at_step_start)  # a long pause risks nothing
            log(f"paused after step {progress.step}")
            control.wait_while_paused(lambda: preemption.requested)
            continue
        if control.current.stop_at_step is not None and progress.step >= control.current.stop_at_step:
            return preempt(progress.step, last_checkpoint, save, rng_at_step_start, trackers)
        step_indices, cursor_after = progress.cursor.next_step(config.seed, len(dataset), step_samples)
        indices = dist.shard(step_indices)
        started = time.perf_counter()
        try:
            faults.before_step(progress.step + 1, lambda: preemption.requested)
            if dist.any(preemption.requested):
                raise PreemptionRequested()
            metrics = optimizer_step(ctx, indices, micro_batch=micro_batch, step_pairs=len(step_indices))
        except PreemptionRequested:
            free_memory(ctx)  # the partial accumulation is dropped; the step is redone on resume
            return preempt(progress.step, last_checkpoint, save, rng_at_step_start, trackers)
        except StepOutOfMemory:
            free_memory(ctx)
            oom_attempts.append(f"micro_batch={micro_batch} gradient_checkpointing={gradient_checkpointing}")
            if micro_batch > 1:
                micro_batch = max(1, micro_batch // 2)
            elif not gradient_checkpointing:
                gradient_checkpointing = True
                enable_gradient_checkpointing(model)
            else:
                raise OutOfMemoryGaveUp(oom_attempts) from None
            # Redo the same optimizer step, same samples, same random numbers.
            restore_rng(rng_at_step_start)
            emit(
                "oom_backoff",
                step=progress.step + 1,
                micro_batch=micro_batch,
                grad_accum=math.ceil(rank_samples / micro_batch),
                gradient_checkpointing=gradient_checkpointing,
            )
            continue
        elapsed = time.perf_counter() - started
        tokens = int(metrics.pop("_tokens"))
        micro_step_seconds = elapsed / max(1, math.ceil(len(indices) / micro_batch))
        if micro_step_seconds > config.preemption_grace_seconds / 2 and not warned_slow:
            warned_slow = True
            log(
                f"one micro-step takes {micro_step_seconds:.1f}s, more than half of preemption_grace_seconds"
                f" ({config.preemption_grace_seconds}s): a SIGTERM may not be honoured in time"
            )
        progress.step += 1
        progress.cursor = cursor_after
        epoch = progress.cursor.epoch_progress(len(dataset))
        if config.objective == "sft":
            # SFTTrainer's num_tokens: every non-padding token trained on so far (the history
            # carries it across resumes).
            metrics["num_tokens"] = int(progress.history[-1]["num_tokens"] if progress.history else 0) + tokens
        progress.history.append({"step": progress.step, "epoch": epoch, "samples": len(step_indices), **metrics})
        last_metrics = metrics
        trackers.log_step(progress.step, epoch, metrics)
        if progress.step % config.log_every_steps == 0 or progress.step == total_steps:
            emit(
                "step",
                step=progress.step,
                epoch=epoch,
                metrics=metrics,
                samples_per_second=len(step_indices) / elapsed,
                tokens_per_second=tokens / elapsed,
                peak_memory_bytes=peak_memory_bytes(device),
            )
        if progress.step % control.checkpoint_every(config.checkpoint_every_steps) == 0:
            last_checkpoint = save(capture_rng())

    final_path = output_dir / "final"
    final_weights = fsdp.trainable_state(model) if dist.fsdp else None
    if dist.is_main:
        # The merged model goes into the same atomic folder, so the manifest covers both.
        merge = (lambda folder: save_merged_model(model, Path(config.model_dir), folder)) if config.merge_model else None
        final_path = ckpt.save_final_adapter(output_dir, progress.step, model, also=merge, weights=final_weights).path
    dist.barrier()
    if not last_metrics and progress.history:
        last_metrics = {k: v for k, v in progress.history[-1].items() if k not in ("step", "epoch", "samples")}
    if dist.is_main:
        trackers.log_artifacts(final_path / ckpt.ADAPTER_DIR, "adapter")
    trackers.close()
    merged = {"model_path": str(final_path / ckpt.MODEL_DIR)} if config.merge_model else {}
    emit("finished", step=progress.step, adapter_path=str(final_path / ckpt.ADAPTER_DIR), metrics=last_metrics,
         **merged, **trackers.event_fields())
    return ExitCode.FINISHED


def preempt(step: int, last: ckpt.CheckpointRef | None, save: Any, rng: dict[str, Any], trackers: Trackers) -> int:
    """Checkpoint the last completed step (unless one exists already) and report preemption."""
    ref = last if last is not None and last.step == step else save(rng)
    trackers.close(finished=False)
    emit("preempted", step=step, checkpoint_path=str(ref.path), **trackers.event_fields())
    return ExitCode.PREEMPTED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DPO / SFT + LoRA trainer (see trainer/CONTRACT.md)")
    parser.add_argument("--config", required=True, help="path of the train config JSON")
    args = parser.parse_args(argv)
    claim_stdout()
    ParentWatchdog().start()  # never outlive the worker (watchdog.py)
    preemption = PreemptionFlag().install()
    code = run_command(lambda: train(load_config(TrainConfig, args.config), preemption))
    # The outcome is decided and reported; a SIGTERM arriving while the interpreter shuts down
    # must not turn it into "killed by signal".
    preemption.ignore_further_signals()
    return code


if __name__ == "__main__":
    sys.exit(main())

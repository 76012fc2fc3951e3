"""Several processes (GPUs) through accelerate: `accelerate launch --num_processes N -m
dpo_trainer.train --config C.json` (or torchrun).

accelerate's Accelerator sets up the process group and each rank's device (NCCL on GPUs, gloo
with `--cpu`). Each optimizer step's samples are split across ranks (rank r takes every N-th of
the step's samples), every rank accumulates its share, and then the trainable (LoRA) gradients
are summed across ranks with one all-reduce -- instead of DDP's hooks, because the ranks must
first agree whether any of them ran out of memory (an OOM on one rank inside DDP's backward
would leave the others waiting in the all-reduce forever) and whether a SIGTERM arrived. With
the loss normalised by the step's *global* pair count, the summed gradient is exactly the
single-process one. Rank 0 alone writes checkpoints and emits events.

With `fsdp: true` the model is sharded instead (fsdp.py): FSDP reduce-scatters the gradients in
each backward itself, and sum_gradients does nothing.

Single process (no WORLD_SIZE or WORLD_SIZE=1): every method is a no-op and nothing from
accelerate is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Distributed:
    world_size: int = 1
    rank: int = 0
    device: torch.device | None = None  # chosen by accelerate when world_size > 1
    accelerator: Any = None
    fsdp: bool = False  # the model is sharded with fully_shard (fsdp.py); only when world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        return indices[self.rank :: self.world_size]

    def any(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def gather_shards(self, values: torch.Tensor, total: int) -> torch.Tensor:
        """The [total] vector whose entries `shard` gave this rank are `values`, from every rank:
        undoes `shard` for per-pair values (a loss that sorts the whole step needs them all)."""
        if self.world_size == 1:
            return values
        full = torch.zeros(total, dtype=torch.float64, device=self.device)
        full[self.rank :: self.world_size] = values.to(self.device, torch.float64)
        torch.distributed.all_reduce(full)
        return full.to(values.device, values.dtype)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum each trainable parameter's gradient over ranks, in place (one flat all-reduce)."""
        if self.world_size == 1 or self.fsdp:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
            offset += n

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def init_distributed(device: str) -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu")
    return Distributed(accelerator.num_processes, accelerator.process_index, accelerator.device, accelerator)

"""Fault-injection hooks, read from the environment, so tests exercise real failure paths.

    DPO_FAULT_OOM_ABOVE_MICRO_BATCH=N  raise torch.OutOfMemoryError in the forward pass whenever a
                                       micro-batch holds more than N pairs (N=0: always)
    DPO_FAULT_SLEEP_PER_STEP=S         sleep S seconds at the start of every optimizer step, so a
                                       test can signal or kill the process mid-run
    DPO_FAULT_CRASH_AT_STEP=N          raise RuntimeError when optimizer step N (1-based) starts
    DPO_FAULT_DTYPE_UNSUPPORTED=D      the dtype probe (modeling.check_dtype_supported) fails for
                                       dtype D (e.g. bfloat16) as on a device without it

Unset variables inject nothing. They are documented in docs/testing.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import InvalidInputError


def _env_number(name: str, kind: type) -> float | int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return kind(raw)
    except ValueError:
        raise InvalidInputError(f"environment variable {name}={raw!r} is not a {kind.__name__}") from None


@dataclass(frozen=True)
class FaultHooks:
    oom_above_micro_batch: int | None = None
    sleep_per_step: float | None = None
    crash_at_step: int | None = None

    @classmethod
    def from_env(cls) -> "FaultHooks":
        return cls(
            oom_above_micro_batch=_env_number("DPO_FAULT_OOM_ABOVE_MICRO_BATCH", int),  # type: ignore[arg-type]
            sleep_per_step=_env_number("DPO_FAULT_SLEEP_PER_STEP", float),
            crash_at_step=_env_number("DPO_FAULT_CRASH_AT_STEP", int),  # type: ignore[arg-type]
        )

    def before_step(self, step: int, interrupted: Callable[[], bool]) -> None:
        if self.crash_at_step is not None and step == self.crash_at_step:
            raise RuntimeError(f"DPO_FAULT_CRASH_AT_STEP: injected crash at step {step}")
        if self.sleep_per_step:
            deadline = time.monotonic() + self.sleep_per_step
            # Sleep in slices so a SIGTERM is acted on promptly.
            while time.monotonic() < deadline and not interrupted():
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def before_forward(self, micro_batch: int) -> None:
        if self.oom_above_micro_batch is not None and micro_batch > self.oom_above_micro_batch:
            raise torch.OutOfMemoryError(
                f"DPO_FAULT_OOM_ABOVE_MICRO_BATCH={self.oom_above_micro_batch}: injected out of memory"
                f" for micro-batch {micro_batch}"
            )

"""SIGTERM (and Ctrl-C) -> a flag the training loop polls between micro-steps.

The handler only sets the flag: saving a checkpoint from inside a signal handler could observe a
half-applied optimizer step. The loop finishes the micro-step it is in, drops the partial
gradient accumulation, checkpoints the last completed optimizer step and exits 75.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

from .events import log


class PreemptionFlag:
    def __init__(self) -> None:
        self.requested_at: float | None = None

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def install(self) -> "PreemptionFlag":
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def ignore_further_signals(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            log(f"received {signal.Signals(signum).name}: checkpointing and exiting")


class PreemptionRequested(Exception):
    """Raised inside an optimizer step to abandon it; the loop checkpoints and exits."""

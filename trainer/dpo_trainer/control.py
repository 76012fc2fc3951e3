"""The control file: how the worker steers a running trainer between optimizer steps.

The train activity writes a small JSON file (atomically: temp file + rename) and passes its path
in the environment variable DPO_TRAINER_CONTROL_FILE; the trainer re-reads it before every step
(only when its mtime changed). Fields, all optional:

    {"paused": false,                 # true: checkpoint the last completed step, then wait
     "checkpoint_every_steps": 50,    # overrides the config's interval from now on
     "stop_at_step": 120}             # checkpoint at this step and exit 75 (a segment ends)

A missing file means "no overrides"; an unreadable one keeps the last good reading.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "DPO_TRAINER_CONTROL_FILE"


@dataclass(frozen=True)
class Control:
    paused: bool = False
    checkpoint_every_steps: int | None = None
    stop_at_step: int | None = None


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class ControlFile:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._mtime: int | None = None
        self.current = Control()

    @classmethod
    def from_env(cls) -> "ControlFile":
        return cls(os.environ.get(ENV_VAR) or None)

    def poll(self) -> Control:
        if self.path is None:
            return self.current
        try:
            mtime = self.path.stat().st_mtime_ns
            if mtime == self._mtime:
                return self.current
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return self.current
        if isinstance(raw, dict):
            self._mtime = mtime
            self.current = Control(
                paused=raw.get("paused") is True,
                checkpoint_every_steps=_positive_int(raw.get("checkpoint_every_steps")),
                stop_at_step=raw.get("stop_at_step") if isinstance(raw.get("stop_at_step"), int) else None,
            )
        return self.current

    def checkpoint_every(self, default: int) -> int:
        return self.current.checkpoint_every_steps or default

    def wait_while_paused(self, interrupted: Callable[[], bool], poll_seconds: float = 0.2) -> None:
        while self.poll().paused and not interrupted():
            time.sleep(poll_seconds)

"""The stdout event stream: one JSON object per line, validated by
schemas/trainer-events.schema.json on both the Python and the Node side.

stdout belongs to the protocol alone. `claim_stdout` moves file descriptor 1 to stderr, so a
stray `print` from a library (or C code writing to fd 1) lands in the free-form log instead of
corrupting the event stream.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, TextIO

_stream: TextIO | None = None
_muted = False


def mute() -> None:
    """Ranks other than 0 of a multi-process run: the event stream is rank 0's alone."""
    global _muted
    _muted = True


def claim_stdout() -> None:
    """Keep the real stdout for events and point fd 1 / sys.stdout at stderr."""
    global _stream
    if _stream is not None:
        return
    sys.stdout.flush()
    _stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _finite(value: Any) -> Any:
    # JSON has no NaN/Infinity; a diverged loss is reported as null instead of breaking parsers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def emit(event: str, **fields: Any) -> dict[str, Any]:
    """Write one event line and flush it, so the parent sees it immediately."""
    record = {"event": event, "time": time.time(), **_finite(fields)}
    if _muted:
        return record
    stream = _stream or sys.stdout
    stream.write(json.dumps(record, allow_nan=False) + "\n")
    stream.flush()
    return record


def log(message: str) -> None:
    """Free-form progress for humans, on stderr."""
    print(f"[dpo_trainer] {message}", file=sys.stderr, flush=True)

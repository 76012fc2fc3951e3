"""Exception -> (`error` event, exit status) mapping shared by the train and evaluate commands."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

import torch

from .errors import ExitCode, TrainerError
from .events import emit


def run_command(body: Callable[[], int]) -> int:
    """Run a command body; every failure ends as one typed `error` event and its exit status."""
    try:
        return int(body())
    except TrainerError as exc:
        emit("error", error_type=exc.error_type, message=str(exc))
        return int(exc.exit_code)
    except torch.OutOfMemoryError as exc:  # outside the training step's own backoff, e.g. loading
        traceback.print_exc(file=sys.stderr)
        emit("error", error_type="OutOfMemory", message=f"out of memory outside a training step: {exc}")
        return int(ExitCode.OUT_OF_MEMORY)
    except Exception as exc:  # a bug or an environment failure: the caller may retry
        traceback.print_exc(file=sys.stderr)
        emit("error", error_type="Crash", message=f"{type(exc).__name__}: {exc}")
        return int(ExitCode.CRASH)

"""What every trainer command shares: `--config` parsing, stdout kept for events, and the
exception -> (`error` event, exit status) mapping."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch

from .config import load_config
from .errors import ExitCode, TrainerError
from .events import claim_stdout, emit


def config_command(argv: list[str] | None, description: str, config_type: type, run: Callable[[Any], int]) -> int:
    """`python -m dpo_trainer.<command> --config FILE`: `run` on the parsed config, its failures
    mapped by `run_command`; fd 1 keeps the events, everything else printed goes to stderr."""
    parser = argparse.ArgumentParser(description=f"{description} (see trainer/CONTRACT.md)")
    parser.add_argument("--config", required=True, help=f"path of the {config_type.__name__} JSON")
    args = parser.parse_args(argv)
    claim_stdout()
    return run_command(lambda: run(load_config(config_type, args.config)))


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

"""Typed failures and the exit statuses the Node train activity maps them to (CONTRACT.md).

The error type says what the caller should do: retry (preemption, crash), replan (out of
memory) or fix the input (invalid config, shard or model folder).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    FINISHED = 0
    CRASH = 1
    INVALID_INPUT = 65  # sysexits EX_DATAERR
    PREEMPTED = 75  # sysexits EX_TEMPFAIL: retry later, a checkpoint was written
    OUT_OF_MEMORY = 76  # the workflow replans (smaller batch) and resumes


class TrainerError(Exception):
    """Base for failures that end the process with an `error` event."""

    error_type = "Crash"
    exit_code = ExitCode.CRASH


class InvalidInputError(TrainerError):
    """Config, shard or checkpoint the user must fix; retrying cannot help."""

    error_type = "InvalidInput"
    exit_code = ExitCode.INVALID_INPUT

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class ModelLoadError(TrainerError):
    """The model folder is missing or transformers cannot load it."""

    error_type = "ModelLoadError"
    exit_code = ExitCode.INVALID_INPUT


class OutOfMemoryGaveUp(TrainerError):
    """Every in-process backoff still ran out of memory; the workflow must replan."""

    error_type = "OutOfMemory"
    exit_code = ExitCode.OUT_OF_MEMORY

    def __init__(self, attempts: list[str]):
        self.attempts = attempts
        super().__init__(
            "out of memory after in-process backoff; tried " + ", ".join(attempts)
            + ". Lower per_device_train_batch_size or use a device with more memory."
        )

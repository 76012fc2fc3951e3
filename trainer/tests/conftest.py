"""Shared fixtures: one tiny model, one set of demo shards and one uninterrupted reference run per
session. `import torch` alone takes many seconds on the CI machine, so most runs happen in-process
(through the same `run_command` the CLI uses); only signal handling needs real subprocesses."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

TESTS = Path(__file__).resolve().parent
TRAINER = TESTS.parent
REPO = TRAINER.parent
SCHEMA_PATH = REPO / "schemas" / "trainer-events.schema.json"
sys.path.insert(0, str(TESTS))

from demo_data import write_demo_shards  # noqa: E402


@dataclass
class RunResult:
    exit_code: int
    events: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]


@pytest.fixture(scope="session")
def event_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="session")
def validate_events(event_validator):
    def check(events: list[dict[str, Any]]) -> None:
        assert events, "no events"
        for event in events:
            event_validator.validate(event)

    return check


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from dpo_trainer.build_tiny_model import write_tiny_llava

    return write_tiny_llava(tmp_path_factory.mktemp("model") / "tiny-llava", seed=0)


@pytest.fixture(scope="session")
def demo_shards(tiny_model_dir, tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """48 training pairs in two shards, 16 held-out pairs."""
    return write_demo_shards(tiny_model_dir, tmp_path_factory.mktemp("shards"), 48, 16, seed=1, shard_size=24)


def parse_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def run_train(config: dict[str, Any], env: dict[str, str] | None = None) -> RunResult:
    """`python -m dpo_trainer.train` without the process: same parsing, loop and exit mapping."""
    from dpo_trainer.cli import run_command
    from dpo_trainer.config import TrainConfig, parse_config
    from dpo_trainer.preemption import PreemptionFlag
    from dpo_trainer.train import train

    out = io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out):
            code = run_command(lambda: train(parse_config(TrainConfig, config), PreemptionFlag()))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return RunResult(code, parse_events(out.getvalue()))


def run_evaluate(config: dict[str, Any]) -> RunResult:
    from dpo_trainer.cli import run_command
    from dpo_trainer.config import EvalConfig, parse_config
    from dpo_trainer.evaluate import run_evaluation

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(lambda: run_evaluation(parse_config(EvalConfig, config)))
    return RunResult(code, parse_events(out.getvalue()))


@pytest.fixture(scope="session")
def train_config(tiny_model_dir, demo_shards):
    """Config factory: 48 pairs, effective batch 8 -> 6 optimizer steps, checkpoints every 2."""

    def make(output_dir: Path, **overrides: Any) -> dict[str, Any]:
        config = {
            "model_dir": str(tiny_model_dir),
            "train_shards": [str(p) for p in demo_shards[0]],
            "output_dir": str(output_dir),
            "seed": 3,
            "epochs": 1,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "learning_rate": 0.005,
            "lr_scheduler_type": "cosine",
            "warmup_ratio": 0.2,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
            "checkpoint_every_steps": 2,
            "log_every_steps": 1,
            "dtype": "float32",
        }
        config.update(overrides)
        return config

    return make


@pytest.fixture(scope="session")
def reference_run(train_config, tmp_path_factory) -> tuple[dict[str, Any], RunResult]:
    """The uninterrupted run every resume / backoff test compares against."""
    config = train_config(tmp_path_factory.mktemp("reference"))
    result = run_train(config)
    assert result.exit_code == 0, result.events[-1]
    return config, result


def adapter_tensors(adapter_dir: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))

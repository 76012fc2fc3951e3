"""Shared fixtures: one tiny model, one set of demo shards and one uninterrupted reference run per
session. `import torch` alone takes many seconds on the CI machine, so most runs happen in-process
(through the same `run_command` the CLI uses); only signal handling needs real subprocesses."""

from __future__ import annotations

import contextlib
import io
import json
import math
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


# ----------------------------------------------------------------------------------------------
# How close two runs that differ only in float rounding must land

FLOAT32_EPS = 2.0**-23  # 1.19e-7


def adapter_distance_bound(reference_config: dict[str, Any], reference: RunResult) -> float:
    """Upper bound on the L2 distance between two adapters trained on the same pairs per step
    whose float32 sums ran in a different order (another micro-batch split, gradients summed
    across ranks, other padding widths).

    One gradient element is a sum over every token of the step's sequences, so its rounding error
    is at most about eps * N relative, N = 2 sequences x pairs per step x longest row (recursive
    summation: (N - 1) * eps / 2 of the sum of magnitudes). AdamW turns each step's gradient into
    an update of at most ~lr per element (Kingma & Ba 2015, sec. 2.1), so step t's update error is
    <= lr_t * eps * N per element, and the final adapter's, over P parameters, <= sqrt(P) * eps * N
    * sum(lr_t). The L2 norm is the statistic because Adam divides each element by its own
    gradient size: where a gradient element nearly cancels, its relative error is large (the
    max-abs difference of mathematically equal runs is ~1e-3 of one element's update), but such
    elements are a negligible share of the norm. A run that does not keep the effective batch
    changes the update direction itself: its distance is O(sqrt(P) * lr), hundreds of times more.
    """
    from dpo_trainer.data import load_shards

    started = reference.of("started")[0]
    pairs_per_step = started["micro_batch"] * started["grad_accum"] * started["world_size"]
    longest_row = load_shards(reference_config["train_shards"]).max_sequence_length()
    terms = 2 * pairs_per_step * longest_row
    total_lr = sum(e["metrics"]["learning_rate"] for e in reference.of("step"))
    params = sum(t.numel() for t in adapter_tensors(reference.last["adapter_path"]).values())
    return math.sqrt(params) * FLOAT32_EPS * terms * total_lr


def adapter_distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    """L2 distance over all adapter parameters, in float64."""
    assert a.keys() == b.keys()
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))

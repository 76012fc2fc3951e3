"""per_device_train_batch_size 'auto': resolved at start, effective batch kept exact."""

from __future__ import annotations

import pytest
import torch

from conftest import run_train

from dpo_trainer.config import TrainConfig, parse_config
from dpo_trainer.errors import InvalidInputError
from dpo_trainer.estimate import auto_micro_batch


def test_cpu_fallback_divides_the_effective_batch():
    cpu = torch.device("cpu")
    assert auto_micro_batch(None, total=64, seq_len=100, device=cpu, dtype="float32", checkpointing=False) == (8, "CPU fallback")
    assert auto_micro_batch(None, total=12, seq_len=100, device=cpu, dtype="float32", checkpointing=False)[0] == 4  # largest power of two dividing 12, <= 8
    assert auto_micro_batch(None, total=3, seq_len=100, device=cpu, dtype="float32", checkpointing=False)[0] == 1


def test_auto_needs_the_total_batch():
    base = {"model_dir": "/m", "train_shards": ["/s"], "output_dir": "/o", "per_device_train_batch_size": "auto"}
    with pytest.raises(InvalidInputError, match="total_train_batch_size: required"):
        parse_config(TrainConfig, base)
    assert parse_config(TrainConfig, {**base, "total_train_batch_size": 64}).effective_batch_size == 64
    with pytest.raises(InvalidInputError, match="is not per_device_train_batch_size x"):
        parse_config(TrainConfig, {**base, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
                                   "total_train_batch_size": 6})


def test_auto_run_matches_the_fixed_split(reference_run, train_config, tmp_path, validate_events):
    config = train_config(tmp_path, per_device_train_batch_size="auto", total_train_batch_size=8)
    del config["gradient_accumulation_steps"]
    result = run_train(config)
    validate_events(result.events)
    assert result.exit_code == 0, result.last
    started = result.of("started")[0]
    assert (started["micro_batch"], started["grad_accum"]) == (8, 1)  # CPU: 8, dividing 8
    ours = [e["metrics"]["loss"] for e in result.of("step")]
    theirs = [e["metrics"]["loss"] for e in reference_run[1].of("step")]  # micro-batch 4 x 2
    assert ours == pytest.approx(theirs, abs=1e-5)

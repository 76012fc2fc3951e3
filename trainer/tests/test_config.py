"""Config parsing: defaults, and every problem reported with its path in one error."""

from __future__ import annotations

import pytest

from dpo_trainer.config import EvalConfig, TrainConfig, parse_config
from dpo_trainer.data import DataCursor, epoch_permutation, steps_until_epoch
from dpo_trainer.errors import InvalidInputError

MINIMAL = {"model_dir": "/m", "train_shards": ["/a.parquet"], "output_dir": "/o"}


def test_defaults_are_the_seed_recipe():
    # The pipeline config's train section takes these as its defaults (contracts/trainerContract.ts).
    config = parse_config(TrainConfig, MINIMAL)
    assert config.seed == 42 and config.epochs == 1 and config.max_steps is None
    assert config.per_device_train_batch_size == 2 and config.gradient_accumulation_steps == 32
    assert config.learning_rate == 5e-6 and config.lr_scheduler_type == "cosine"
    assert config.beta == 0.1 and config.loss_type == "sigmoid" and config.label_smoothing == 0.0
    assert (config.lora.r, config.lora.alpha, config.lora.target_modules) == (16, 32, "all-linear")
    assert config.dtype == "bfloat16" and config.checkpoint_every_steps == 50
    assert config.device == "auto" and config.preemption_grace_seconds == 30


def test_every_problem_is_listed_with_its_path():
    raw = {
        **MINIMAL,
        "learning_rate": -1,
        "loss_type": "dpo",
        "lora": {"r": 0, "rank": 4},
        "epochs": True,
        "surprise": 1,
    }
    with pytest.raises(InvalidInputError) as err:
        parse_config(TrainConfig, raw)
    message = str(err.value)
    for fragment in ("learning_rate: must be > 0", "loss_type: expected one of", "lora.r: must be >= 1",
                     "lora.rank: unknown key", "epochs: expected integer", "surprise: unknown key"):
        assert fragment in message


def test_missing_required_fields():
    with pytest.raises(InvalidInputError, match="model_dir: required"):
        parse_config(TrainConfig, {"train_shards": ["/a"], "output_dir": "/o"})
    with pytest.raises(InvalidInputError, match="shards: required"):
        parse_config(EvalConfig, {"model_dir": "/m"})


def test_cross_field_checks():
    with pytest.raises(InvalidInputError, match="label_smoothing"):
        parse_config(TrainConfig, {**MINIMAL, "loss_type": "hinge", "label_smoothing": 0.1})
    with pytest.raises(InvalidInputError, match="only 'robust'"):
        parse_config(TrainConfig, {**MINIMAL, "loss_type": "sigmoid", "label_smoothing": 0.1})
    assert parse_config(TrainConfig, {**MINIMAL, "loss_type": "robust", "label_smoothing": 0.1}).label_smoothing == 0.1
    with pytest.raises(InvalidInputError, match="device"):
        parse_config(TrainConfig, {**MINIMAL, "device": "tpu"})


def test_data_order_depends_on_seed_and_epoch_only():
    assert (epoch_permutation(7, 0, 50) == epoch_permutation(7, 0, 50)).all()
    assert not (epoch_permutation(7, 0, 50) == epoch_permutation(7, 1, 50)).all()


def test_cursor_walks_epochs_without_straddling():
    cursor, seen = DataCursor(), []
    for _ in range(steps_until_epoch(DataCursor(), 10, 4, 2)):
        indices, cursor = cursor.next_step(0, 10, 4)
        seen.append(indices)
    assert [len(s) for s in seen] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(seen[:3], [])) == list(range(10)) and sorted(sum(seen[3:], [])) == list(range(10))
    assert cursor == DataCursor(epoch=2, offset=0)

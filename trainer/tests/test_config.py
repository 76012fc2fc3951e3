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
    for fragment in ("learning_rate: must be > 0", "loss_type: expected 'sigmoid' | 'hinge'", "lora.r: must be >= 1",
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
    with pytest.raises(InvalidInputError, match="only robust, exo_pair, aot, aot_unpaired read it"):
        parse_config(TrainConfig, {**MINIMAL, "loss_type": "sigmoid", "label_smoothing": 0.1})
    assert parse_config(TrainConfig, {**MINIMAL, "loss_type": "robust", "label_smoothing": 0.1}).label_smoothing == 0.1
    with pytest.raises(InvalidInputError, match="device"):
        parse_config(TrainConfig, {**MINIMAL, "device": "tpu"})


def test_loss_lists_and_weights():
    mpo = parse_config(TrainConfig, {**MINIMAL, "loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]})
    assert mpo.loss_types == ["sigmoid", "bco_pair", "sft"] and mpo.loss_weights == [0.8, 0.2, 1.0]
    assert parse_config(TrainConfig, MINIMAL).loss_types == ["sigmoid"]
    with pytest.raises(InvalidInputError, match=r"loss_weights: 1 weights for 2 loss types"):
        parse_config(TrainConfig, {**MINIMAL, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]})
    with pytest.raises(InvalidInputError, match=r"loss_type\[1\]: expected one of"):
        parse_config(TrainConfig, {**MINIMAL, "loss_type": ["sigmoid", "kto"]})
    with pytest.raises(InvalidInputError, match="loss_type: must not be empty"):
        parse_config(TrainConfig, {**MINIMAL, "loss_type": []})


# The combinations TRL's DPOConfig/DPOTrainer refuse (or fail on), each named by its field.
REFUSED = [
    ({"loss_type": "exo_pair"}, "label_smoothing: must be > 0 with loss_type exo_pair"),
    ({"loss_type": "robust", "label_smoothing": 0.5}, "label_smoothing: must be < 0.5 with loss_type robust"),
    ({"loss_type": ["aot", "sigmoid"], "use_weighting": True}, "use_weighting: not available with loss_type aot"),
    ({"loss_type": "aot_unpaired", "use_weighting": True}, "use_weighting: not available with loss_type aot"),
    ({"loss_type": ["sigmoid", "sft"], "use_weighting": True}, "use_weighting: not available with loss_type sft"),
    ({"ld_alpha": 0.5, "precompute_ref_log_probs": True, "ref_log_probs_files": ["/r.parquet"]},
     "ld_alpha: not available with precompute_ref_log_probs"),
    ({"ld_alpha": 1.5}, "ld_alpha: must be <= 1"),
    ({"discopop_tau": 0}, "discopop_tau: must be > 0"),
    ({"label_smoothing": 1.0, "loss_type": "exo_pair"}, "label_smoothing: must be < 1"),
]


@pytest.mark.parametrize(("fields", "message"), REFUSED, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(REFUSED)])
def test_refused_loss_combinations_name_the_field(fields, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_config(TrainConfig, {**MINIMAL, **fields})


def test_accepted_loss_options():
    for fields in ({"loss_type": "exo_pair", "label_smoothing": 1e-3}, {"loss_type": "aot", "label_smoothing": 0.3},
                   {"loss_type": ["sigmoid", "robust"], "label_smoothing": 0.1}, {"ld_alpha": 0.0},
                   {"use_weighting": True, "loss_type": ["ipo", "bco_pair"]}, {"loss_type": "discopop", "discopop_tau": 0.5}):
        parse_config(TrainConfig, {**MINIMAL, **fields})


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

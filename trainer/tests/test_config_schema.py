"""schemas/trainer-config.schema.json, schemas/trainer-exit-codes.json and their TypeScript twin
contracts/trainerContract.generated.ts are generated from the config dataclasses and `ExitCode`: the
committed files are what the generator writes, and the schema (which Node validates with) accepts
exactly what the parser accepts, field by field."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from dpo_trainer import schema
from dpo_trainer.config import EvalConfig, ExportConfig, ReferenceConfig, TrainConfig, parse_config
from dpo_trainer.errors import ExitCode, InvalidInputError

TRAIN = {"model_dir": "/m", "train_shards": ["/a.parquet"], "output_dir": "/o"}
REQUIRED = {
    TrainConfig: TRAIN,
    ReferenceConfig: {"model_dir": "/m", "shards": ["/a.parquet"], "output_dir": "/o"},
    EvalConfig: {"model_dir": "/m", "shards": ["/a.parquet"]},
    ExportConfig: {"model_dir": "/m", "out_dir": "/o"},
}


def validator(cls: type) -> jsonschema.Draft202012Validator:
    document = schema.config_schema()
    return jsonschema.Draft202012Validator({**document, "$ref": f"#/$defs/{cls.__name__}"})


def parser_accepts(cls: type, raw: dict) -> bool:
    try:
        parse_config(cls, raw)
        return True
    except InvalidInputError:
        return False


def test_committed_files_are_what_the_generator_writes():
    assert schema.stale_files() == [], "regenerate: cd trainer && .venv/bin/python -m dpo_trainer.schema"


def test_check_mode_names_a_stale_file(tmp_path, capsys):
    assert schema.main(["--repo", str(tmp_path)]) == 0
    assert schema.main(["--check", "--repo", str(tmp_path)]) == 0
    path = tmp_path / schema.CONFIG_SCHEMA
    path.write_text(path.read_text().replace("5e-06", "0.001"))
    assert schema.main(["--check", "--repo", str(tmp_path)]) == 1
    assert "schemas/trainer-config.schema.json is stale" in capsys.readouterr().err


def test_schema_is_valid_and_complete():
    document = schema.config_schema()
    jsonschema.Draft202012Validator.check_schema(document)
    for cls in REQUIRED:
        properties = document["$defs"][cls.__name__]["properties"]
        assert list(properties) == [f.name for f in dataclasses.fields(cls)]
        for name, prop in properties.items():
            assert prop["description"], f"{cls.__name__}.{name} has no description"
    lr = document["$defs"]["TrainConfig"]["properties"]["learning_rate"]
    assert (lr["type"], lr["exclusiveMinimum"], lr["default"]) == ("number", 0, 5e-6)
    assert document["$defs"]["LossType"]["enum"][:3] == ["sigmoid", "hinge", "ipo"] and len(document["$defs"]["LossType"]["enum"]) == 15


def test_exit_codes_are_the_enum():
    codes = json.loads((schema.REPO / schema.EXIT_CODES).read_text())["exit_codes"]
    assert codes == {"FINISHED": 0, "CRASH": 1, "INVALID_INPUT": 65, "PREEMPTED": 75, "OUT_OF_MEMORY": 76}
    assert codes == {c.name: c.value for c in ExitCode}


@pytest.mark.parametrize("cls", list(REQUIRED))
def test_every_default_written_out_is_valid_on_both_sides(cls):
    document = schema.config_schema()
    defaults = {k: p["default"] for k, p in document["$defs"][cls.__name__]["properties"].items() if "default" in p}
    raw = {**defaults, **REQUIRED[cls]}
    validator(cls).validate(raw)
    assert parser_accepts(cls, raw)
    # ...and they are the dataclass's own.
    assert parse_config(cls, raw) == parse_config(cls, REQUIRED[cls])


# One field changed at a time; none breaks a cross-field rule (those only the parser checks).
FIELD_CASES = [
    ("learning_rate", 1e-4, True), ("learning_rate", 0, False), ("learning_rate", -1, False), ("learning_rate", "1e-4", False),
    ("epochs", 2, True), ("epochs", 0, False), ("epochs", True, False), ("epochs", 1.5, False),
    ("max_steps", None, True), ("max_steps", 3, True), ("max_steps", 0, False),
    ("per_device_train_batch_size", 4, True), ("per_device_train_batch_size", 0, False),
    ("per_device_train_batch_size", "big", False), ("per_device_train_batch_size", 2.5, False),
    ("warmup_ratio", 0.99, True), ("warmup_ratio", 1, False), ("warmup_ratio", -0.1, False),
    ("max_grad_norm", 0, True), ("max_grad_norm", -1, False),
    ("label_smoothing", 0.0, True), ("label_smoothing", -0.1, False),
    ("loss_type", "ipo", True), ("loss_type", "dpo", False), ("loss_type", ["sigmoid", "sft"], True),
    ("loss_type", [], False), ("loss_type", ["sigmoid", "dpo"], False),
    ("loss_weights", None, True), ("loss_weights", [1.0], True), ("loss_weights", ["1"], False),
    ("ld_alpha", None, True), ("ld_alpha", 0.0, True), ("ld_alpha", 1.0, True), ("ld_alpha", 1.01, False),
    ("ld_alpha", -0.1, False), ("use_weighting", True, True), ("use_weighting", 1, False),
    ("discopop_tau", 0.05, True), ("discopop_tau", 0, False),
    ("lr_scheduler_type", "linear", True), ("lr_scheduler_type", "step", False),
    ("dtype", "float16", True), ("dtype", "int8", False),
    ("device", "cuda:3", True), ("device", "cpu", True), ("device", "tpu", False), ("device", "cuda:x", False),
    ("device", "xcuda", False), ("device", "cuda:1x", False),
    ("train_shards", [], False), ("train_shards", ["/a", 3], False),
    ("resume_from", None, True), ("resume_from", 3, False),
    ("gradient_checkpointing", 1, False),
    ("lora", {"r": 8}, True), ("lora", {"r": 0}, False), ("lora", {"dropout": 1}, False), ("lora", {"rank": 4}, False),
    ("lora", {"target_modules": ["q_proj"]}, True), ("lora", {"target_modules": 3}, False),
    ("surprise", 1, False),
]


@pytest.mark.parametrize(("name", "value", "valid"), FIELD_CASES, ids=[f"{n}={v!r}" for n, v, _ in FIELD_CASES])
def test_schema_and_parser_agree(name, value, valid):
    raw = {**TRAIN, name: value}
    assert parser_accepts(TrainConfig, raw) is valid
    assert validator(TrainConfig).is_valid(raw) is valid


def test_missing_required_field_is_refused_by_both():
    raw = {k: v for k, v in TRAIN.items() if k != "model_dir"}
    assert not parser_accepts(TrainConfig, raw) and not validator(TrainConfig).is_valid(raw)

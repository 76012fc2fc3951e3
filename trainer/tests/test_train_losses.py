"""TRL's loss options in real training runs on the tiny model: they train, and a step's update does
not depend on its micro-batch split (OOM backoff), for per-pair losses, the step-level sft mean
and the sorting losses alike; a resumed run of a sorting loss is bitwise exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import adapter_distance, adapter_distance_bound, adapter_tensors, run_train

MPO = {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0], "ld_alpha": 0.5}
SETUPS = {
    "mpo-ld": MPO,
    "aot-unpaired+sft": {"loss_type": ["aot_unpaired", "sft"], "label_smoothing": 0.1},
    "wpo": {"loss_type": ["ipo", "exo_pair"], "label_smoothing": 1e-3, "use_weighting": True},
    "discopop": {"loss_type": "discopop", "discopop_tau": 0.5},
}


@pytest.mark.parametrize("name", SETUPS)
def test_backoff_to_micro_batch_1_lands_on_the_same_adapter(name, train_config, tmp_path, validate_events):
    options = {**SETUPS[name], "max_steps": 2}
    plain_config = train_config(tmp_path / "plain", **options)
    plain = run_train(plain_config)
    validate_events(plain.events)
    assert plain.exit_code == 0, plain.last
    backed_off = run_train(train_config(tmp_path / "backoff", **options), env={"DPO_FAULT_OOM_ABOVE_MICRO_BATCH": "1"})
    assert backed_off.exit_code == 0, backed_off.last
    assert [e["micro_batch"] for e in backed_off.of("oom_backoff")] == [2, 1]
    for a, b in zip(plain.of("step"), backed_off.of("step")):
        for metric in ("loss", "rewards/margins", "logps/chosen"):
            assert a["metrics"][metric] == pytest.approx(b["metrics"][metric], rel=1e-4, abs=1e-5), metric
    distance = adapter_distance(adapter_tensors(plain.last["adapter_path"]), adapter_tensors(backed_off.last["adapter_path"]))
    assert distance < adapter_distance_bound(plain_config, plain)
    # The options are in effect (the runs above are not plain DPO twice): another loss per step.
    sigmoid = run_train(train_config(tmp_path / "sigmoid", max_steps=2))
    for a, b in zip(plain.of("step"), sigmoid.of("step")):
        assert abs(a["metrics"]["loss"] - b["metrics"]["loss"]) > 1e-3


def test_sorting_loss_resumes_bitwise(train_config, tmp_path):
    options = {"loss_type": ["aot", "sigmoid"], "label_smoothing": 0.2, "max_steps": 4,
               "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"}}
    whole = run_train(train_config(tmp_path / "whole", **options))
    assert whole.exit_code == 0, whole.last
    crashed = run_train(train_config(tmp_path / "resumed", **options), env={"DPO_FAULT_CRASH_AT_STEP": "3"})
    assert crashed.exit_code == 1
    checkpoint = Path(tmp_path / "resumed" / "checkpoints" / "step-00000002")
    resumed = run_train(train_config(tmp_path / "resumed", resume_from=str(checkpoint), **options))
    assert resumed.exit_code == 0, resumed.last
    assert [e["metrics"] for e in resumed.of("step")] == [e["metrics"] for e in whole.of("step")[2:]]
    final, expected = adapter_tensors(resumed.last["adapter_path"]), adapter_tensors(whole.last["adapter_path"])
    assert adapter_distance(final, expected) == 0.0


def test_resume_refuses_other_loss_options(train_config, tmp_path):
    first = run_train(train_config(tmp_path, max_steps=2, **MPO))
    assert first.exit_code == 0, first.last
    checkpoint = tmp_path / "checkpoints" / "step-00000002"
    other = {**MPO, "loss_weights": [0.5, 0.5, 1.0], "ld_alpha": 0.4}
    result = run_train(train_config(tmp_path / "again", resume_from=str(checkpoint), max_steps=3, **other))
    assert result.exit_code == 65 and "loss_weights" in result.last["message"] and "ld_alpha" in result.last["message"]

"""init_adapter (`init_from`): a fresh start loads an earlier adapter's LoRA weights, so the
first step already differs from the reference (a fresh LoRA starts equal to it: B = 0)."""

from __future__ import annotations

from conftest import run_train


def test_first_step_starts_from_the_given_adapter(reference_run, train_config, tmp_path):
    _, reference = reference_run
    fresh = reference.of("step")[0]["metrics"]
    assert fresh["rewards/margins"] == 0.0  # fresh LoRA: policy == reference at step 1

    result = run_train(train_config(tmp_path / "init", init_adapter=reference.last["adapter_path"], max_steps=1))
    assert result.exit_code == 0, result.events[-1]
    first = result.of("step")[0]["metrics"]
    assert first["rewards/margins"] != 0.0
    assert first["loss"] != fresh["loss"]


def test_missing_init_adapter_is_invalid_input(train_config, tmp_path):
    result = run_train(train_config(tmp_path / "bad", init_adapter=str(tmp_path / "nothing"), max_steps=1))
    assert result.exit_code == 65
    assert "init_adapter" in result.last["message"]

"""Bad input -> exit 65 with a message naming the field or file: dtypes, truncated shards."""

from __future__ import annotations

import pytest
import torch

from conftest import run_train

from dpo_trainer.modeling import check_dtype_supported


def test_truncated_parquet_shard_names_the_file(train_config, tmp_path, demo_shards):
    good = demo_shards[0][0].read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good[: len(good) // 2])  # a copy cut short: no footer
    result = run_train(train_config(tmp_path / "out", train_shards=[str(truncated), str(demo_shards[0][1])]))
    assert (result.exit_code, result.last["error_type"]) == (65, "InvalidInput")
    assert str(truncated) in result.last["message"] and "not a readable parquet file" in result.last["message"]


def test_dtype_the_device_cannot_do_exits_65(train_config, tmp_path, monkeypatch):
    # The probe's failure path, as on a CPU (or a pre-Ampere GPU) without bfloat16 kernels.
    monkeypatch.setenv("DPO_FAULT_DTYPE_UNSUPPORTED", "bfloat16")
    result = run_train(train_config(tmp_path, dtype="bfloat16"))
    assert (result.exit_code, result.last["error_type"]) == (65, "InvalidInput")
    assert result.last["message"].startswith("dtype: bfloat16 is not supported on cpu")
    assert "use dtype float32" in result.last["message"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_this_cpu_does_both_half_precisions(dtype):
    # torch 2.15's CPU autocast has bf16 and fp16 kernels; the real probe passes here (and the
    # mixed-precision training test in test_train.py runs both).
    rng = torch.get_rng_state()
    check_dtype_supported(torch.device("cpu"), dtype)
    assert torch.equal(rng, torch.get_rng_state())  # the probe draws no random numbers


def test_missing_model_for_reference_exits_65(tmp_path, demo_shards):
    from test_reference import run_reference

    result = run_reference({"model_dir": str(tmp_path / "nowhere"), "shards": [str(demo_shards[0][0])],
                            "output_dir": str(tmp_path / "ref")})
    assert (result.exit_code, result.last["error_type"]) == (65, "ModelLoadError")
    assert not (tmp_path / "ref").exists()

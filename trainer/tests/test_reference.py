"""Precomputed reference log-probs (dpo_trainer.reference): same losses as the per-step reference
forward pass, the pass really skipped, and files that do not fit the shards or model refused."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import RunResult, parse_events, run_train

from dpo_trainer.checkpoint import sha256_file


def run_reference(config: dict) -> RunResult:
    from dpo_trainer.cli import run_command
    from dpo_trainer.config import ReferenceConfig, parse_config
    from dpo_trainer.reference import run_reference as body

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(lambda: body(parse_config(ReferenceConfig, config)))
    return RunResult(code, parse_events(out.getvalue()))


@pytest.fixture(scope="module")
def precomputed(tiny_model_dir, demo_shards, tmp_path_factory, validate_events) -> Path:
    # A larger batch than training's micro-batch: other padding widths must not change the numbers.
    result = run_reference({
        "model_dir": str(tiny_model_dir), "shards": [str(p) for p in demo_shards[0]],
        "output_dir": str(tmp_path_factory.mktemp("ref") / "reference"), "batch_size": 16,
    })
    validate_events(result.events)
    assert result.exit_code == 0, result.last
    finished = result.last
    assert finished["event"] == "reference_finished" and finished["samples"] == 48
    folder = Path(finished["path"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"][0]["sha256"] == sha256_file(folder / "ref_logps.parquet")
    return folder / "ref_logps.parquet"


def test_precomputed_reference_gives_the_same_losses_and_skips_the_reference_pass(
    precomputed, reference_run, train_config, tmp_path, monkeypatch, validate_events
):
    import dpo_trainer.train as train_module

    calls = {"forward": 0}
    real = train_module.completion_token_logps

    def counting(model, batch, **kwargs):
        calls["forward"] += 1
        return real(model, batch, **kwargs)

    monkeypatch.setattr(train_module, "completion_token_logps", counting)
    config = train_config(tmp_path, precompute_ref_log_probs=True, ref_log_probs_files=[str(precomputed)])
    result = run_train(config)
    validate_events(result.events)
    assert result.exit_code == 0, result.last
    # 6 steps x 2 micro-batches: one (policy) forward each; the per-step run makes two.
    assert calls["forward"] == 6 * 2
    ours = [e["metrics"] for e in result.of("step")]
    theirs = [e["metrics"] for e in reference_run[1].of("step")]
    assert len(ours) == len(theirs) == 6
    for a, b in zip(ours, theirs):
        for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"):
            assert a[name] == pytest.approx(b[name], abs=1e-5), name


def test_refuses_files_that_do_not_match_the_shards(precomputed, train_config, tmp_path):
    folder = tmp_path / "short"
    shutil.copytree(precomputed.parent, folder)
    table = pq.read_table(folder / "ref_logps.parquet")
    dropped = table.column("sample_id")[0].as_py()
    pq.write_table(table.slice(1), folder / "ref_logps.parquet")
    # Tampered without updating the manifest: the checksum catches it.
    config = train_config(tmp_path / "a", precompute_ref_log_probs=True, ref_log_probs_files=[str(folder / "ref_logps.parquet")])
    result = run_train(config)
    assert (result.exit_code, result.last["error_type"]) == (65, "InvalidInput")
    assert "sha256" in result.last["message"]
    # A consistent manifest for other shards: the sample_ids do not match.
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = sha256_file(folder / "ref_logps.parquet")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run_train({**config, "output_dir": str(tmp_path / "b")})
    assert (result.exit_code, result.last["error_type"]) == (65, "InvalidInput")
    assert "no reference log-probs for 1 sample" in result.last["message"] and dropped in result.last["message"]


def test_switch_and_files_go_together(train_config, tmp_path):
    result = run_train(train_config(tmp_path, precompute_ref_log_probs=True))
    assert result.exit_code == 65 and "ref_log_probs_files: required" in result.last["message"]

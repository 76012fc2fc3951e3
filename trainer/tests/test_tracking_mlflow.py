"""report_to: mlflow against a real MLflow tracking server (PyPI's mlflow, started here with a
SQLite store and proxied artifacts), read back with MLflow's own client: nested runs, one run id
per stage across a crash and its resume, each step once, the adapter as an artifact, and a server
that is down never stopping training.

The server comes from the tools cache `npm run setup` fills (scripts/install-tools.sh), or from
DPO_MLFLOW_BIN."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import run_train

from dpo_trainer.tracking import close_open_trackers

MLFLOW_VERSION = next(
    line.split('"')[1] for line in (Path(__file__).resolve().parents[2] / "scripts" / "versions.sh").read_text().splitlines()
    if line.startswith("MLFLOW_VERSION=")
)
MLFLOW_BIN = Path(os.environ.get("DPO_MLFLOW_BIN") or Path.home() / ".cache/dpo-vlm/tools" / f"mlflow-{MLFLOW_VERSION}" / "bin" / "mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if not MLFLOW_BIN.exists():
        pytest.fail(f"no MLflow server at {MLFLOW_BIN}: run `npm run setup` (scripts/install-tools.sh), or set DPO_MLFLOW_BIN")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [str(MLFLOW_BIN), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--serve-artifacts",
         "--artifacts-destination", f"file://{root}/artifacts"],
        stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            pytest.fail(f"the MLflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(30)


def pipeline_runs_seen(uri: str, experiment: str, pipeline_run: str, fields: str) -> Any:
    """What MLflow's own client sees, from the server's virtualenv: `fields` (a Python expression
    over each run `r` and the client `c`) for every run tagged with the pipeline run, as JSON."""
    script = f"""
import json
from mlflow import MlflowClient
c = MlflowClient({uri!r})
exp = c.get_experiment_by_name({experiment!r})
runs = c.search_runs([exp.experiment_id], "tags.`dpo.run_id` = '{pipeline_run}'")
print(json.dumps([{fields} for r in runs]))
"""
    result = subprocess.run([str(MLFLOW_BIN.parent / "python"), "-c", script], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def read_back(uri: str, experiment: str, pipeline_run: str) -> dict:
    """Each run by its `dpo.kind`: status, tags, params, the train loss history and the adapter artifacts."""
    runs = pipeline_runs_seen(uri, experiment, pipeline_run, """{
        "run_id": r.info.run_id, "status": r.info.status, "tags": r.data.tags, "params": r.data.params,
        "loss": [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "train/loss")],
        "artifacts": [f.path for f in c.list_artifacts(r.info.run_id, "adapter")]}""")
    return {run["tags"]["dpo.kind"]: run for run in runs}


def test_crash_then_resume_one_run_each_step_once(mlflow_server, reference_run, train_config, tmp_path, monkeypatch):
    _, reference = reference_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "dpo-test")
    settings = {"report_to": ["mlflow"], "run_name": "p1/train", "run_tags": ["run_id=p1", "stage=train", "temporal_run_id=abc"]}
    crashed = run_train(train_config(tmp_path, **settings), env={"DPO_FAULT_CRASH_AT_STEP": "4"})
    assert crashed.exit_code == 1
    close_open_trackers()  # what the crashed process does on its way out (atexit)
    first = read_back(mlflow_server, "dpo-test", "p1")
    assert [s for s, _ in first["train"]["loss"]] == [1, 2, 3]

    resumed = run_train(train_config(tmp_path, resume_from=str(tmp_path / "checkpoints" / "step-00000002"), **settings))
    assert resumed.exit_code == 0
    assert resumed.last["tracking"]["failures"] == {"mlflow": 0}
    seen = read_back(mlflow_server, "dpo-test", "p1")
    train, parent = seen["train"], seen["pipeline"]
    assert train["run_id"] == first["train"]["run_id"]  # the resumed stage continued its run
    # The stage summary links the run's page, which the server serves.
    link = resumed.last["tracking"]["links"]["mlflow"]
    assert link.startswith(f"{mlflow_server}/#/experiments/") and link.endswith(f"/runs/{train['run_id']}")
    with urllib.request.urlopen(link.split("#")[0], timeout=10) as response:
        assert response.status == 200
    assert train["tags"]["mlflow.parentRunId"] == parent["run_id"]
    assert train["tags"]["dpo.temporal_run_id"] == "abc" and train["status"] == "FINISHED"
    assert [s for s, _ in train["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in train["loss"]] == pytest.approx([e["metrics"]["loss"] for e in reference.of("step")], rel=1e-6)
    assert train["params"]["beta"] == "0.1" and train["params"]["lora.r"] == "4"
    assert "adapter/adapter_model.safetensors" in train["artifacts"]


def test_a_server_that_is_down_never_stops_training_nor_shows_the_token(train_config, tmp_path, monkeypatch, capfd):
    token = "mlflow-token-0123456789abcdef"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{token}@127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    result = run_train(train_config(tmp_path, report_to=["mlflow"], max_steps=2, run_tags=["run_id=p2", "stage=train"]))
    assert result.exit_code == 0
    assert result.last["tracking"]["failures"]["mlflow"] >= 1
    log = capfd.readouterr().err
    assert "mlflow call failed" in log  # the warning is there...
    assert token not in log and token not in json.dumps(result.events)  # ...without the credentials


def test_mlflow_needs_a_tracking_server(train_config, tmp_path, monkeypatch, validate_events):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = run_train(train_config(tmp_path, report_to=["mlflow"], max_steps=1))
    validate_events(result.events)
    assert result.exit_code == 65 and "MLFLOW_TRACKING_URI" in result.last["message"]

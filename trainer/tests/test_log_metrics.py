"""`python -m dpo_trainer.log_metrics`: evaluation metrics, the report and the pipeline run's end
for the trackers, against the real MLflow server (read back with MLflow's own client) and
TensorBoard event files (read back with TensorBoard's reader)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_tracking_mlflow import free_port, mlflow_server, pipeline_runs_seen  # noqa: F401 -- the server fixture

from dpo_trainer.log_metrics import log_request
from dpo_trainer.mlflow_tracker import MlflowRest, MlflowTracker
from dpo_trainer.tracking import RunInfo

METRICS = {
    "eval/base/rewards/accuracies": 0.0, "eval/dpo/rewards/accuracies": 0.75, "eval/dpo/rewards/margins": 0.125,
    "eval/dpo/amber/existence/accuracy": 0.9, "eval/dpo/amber/existence/f1": 0.8, "eval/dpo/amber/overall/yes_ratio": 0.4,
    "eval/dpo/amber/generative/chair": 0.25,
}


def request(tmp_path: Path, run_id: str, **extra) -> dict:
    report = tmp_path / "report"
    report.mkdir(exist_ok=True)
    (report / "report.md").write_text("# report\n")
    (report / "report.html").write_text("<h1>report</h1>\n")
    return {
        "report_to": ["mlflow", "tensorboard"], "run_id": run_id, "tags": {"run_id": run_id, "temporal_workflow_id": "wf-1"},
        "evaluations": {"evaluate": {"metrics": METRICS, "step": 6, "tags": {"evaluates": "train"}}},
        "tensorboard_dir": str(tmp_path / "tb"), "artifacts": [{"dir": str(report), "path": "report"}], "status": "FINISHED",
        **extra,
    }


def read_back(uri: str, experiment: str, pipeline_run: str) -> dict:
    """Each run by its `dpo.kind`: status, tags, metrics, the eval accuracy's history and the report artifacts."""
    runs = pipeline_runs_seen(uri, experiment, pipeline_run, """{
        "run_id": r.info.run_id, "status": r.info.status, "tags": r.data.tags, "metrics": r.data.metrics,
        "history": [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "eval/dpo/rewards/accuracies")],
        "artifacts": [f.path for f in c.list_artifacts(r.info.run_id, "report")]}""")
    return {run["tags"]["dpo.kind"]: run for run in runs}


def test_eval_metrics_nested_runs_report_and_parent_status(mlflow_server, tmp_path):  # noqa: F811
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "dpo-eval-test"}
    # The train stage logged first: it created the pipeline's parent run.
    train = MlflowTracker(MlflowRest(mlflow_server, env), "dpo-eval-test", RunInfo("e1/train", {}, {"run_id": "e1", "stage": "train"}))
    train.log_metrics({"train/loss": 0.6}, 1)
    train.close()

    answer = log_request(request(tmp_path, "e1"), env)
    assert answer["failures"] == {"mlflow": 0, "tensorboard": 0}
    seen = read_back(mlflow_server, "dpo-eval-test", "e1")
    parent, evaluate = seen["pipeline"], seen["evaluate"]
    assert answer["links"]["mlflow"].endswith(f"/runs/{parent['run_id']}")
    assert seen["train"]["tags"]["mlflow.parentRunId"] == parent["run_id"]  # one parent for both
    assert evaluate["tags"]["mlflow.parentRunId"] == parent["run_id"]
    assert evaluate["tags"]["dpo.stage"] == "evaluate" and evaluate["tags"]["dpo.evaluates"] == "train"
    assert evaluate["metrics"] == pytest.approx(METRICS) and evaluate["status"] == "FINISHED"
    assert parent["status"] == "FINISHED"
    assert sorted(parent["artifacts"]) == ["report/report.html", "report/report.md"]

    # A retried report logs into the same runs, each value once.
    again = log_request(request(tmp_path, "e1"), env)
    assert again["failures"]["mlflow"] == 0
    retried = read_back(mlflow_server, "dpo-eval-test", "e1")
    assert retried["evaluate"]["run_id"] == evaluate["run_id"] and retried["pipeline"]["run_id"] == parent["run_id"]
    assert retried["evaluate"]["history"] == [[6, 0.75]]


def test_a_down_server_is_a_warning_and_a_count(tmp_path, capfd):
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "MLFLOW_TRACKING_TOKEN": "secret-token-xyz"}
    answer = log_request(request(tmp_path, "e2"), env)
    assert answer["failures"]["mlflow"] >= 1 and answer["failures"]["tensorboard"] == 0
    err = capfd.readouterr().err
    assert "warning: mlflow" in err and "secret-token-xyz" not in err


def test_tensorboard_event_files_hold_the_eval_tags(tmp_path):
    answer = log_request({**request(tmp_path, "e3"), "report_to": ["tensorboard"]}, {})
    assert answer["failures"] == {"tensorboard": 0}
    acc = EventAccumulator(str(tmp_path / "tb" / "evaluate"))
    acc.Reload()
    assert set(METRICS) <= set(acc.Tags()["scalars"])
    for tag, value in METRICS.items():
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(6, pytest.approx(value))]


def test_the_command_prints_its_answer(tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps({**request(tmp_path, "e4"), "report_to": ["tensorboard"]}))
    out = subprocess.run([sys.executable, "-m", "dpo_trainer.log_metrics", str(path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"failures": {"tensorboard": 0}, "links": {}}


def test_the_pipeline_run_opens_before_its_stages_and_a_failure_ends_the_open_ones(mlflow_server, tmp_path):  # noqa: F811
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "dpo-failed-test"}
    lifecycle = {"report_to": ["mlflow"], "run_id": "f1", "tags": {"run_id": "f1", "temporal_workflow_id": "wf-f1"}}
    opened = log_request({**lifecycle, "status": "RUNNING"}, env)
    assert opened["failures"] == {"mlflow": 0}
    parent = read_back(mlflow_server, "dpo-failed-test", "f1")["pipeline"]
    assert parent["status"] == "RUNNING" and parent["tags"]["dpo.temporal_workflow_id"] == "wf-f1"
    assert opened["links"]["mlflow"].endswith(f"/runs/{parent['run_id']}")

    # Two sweep branches find the parent that exists already; one crashes and leaves its run open.
    rest = MlflowRest(mlflow_server, env)
    for branch, finished in (("train.lr_1", True), ("train.lr_2", False)):
        tracker = MlflowTracker(rest, "dpo-failed-test", RunInfo(f"f1/{branch}", {}, {"run_id": "f1", "stage": branch}))
        tracker.log_metrics({"train/loss": 0.6}, 1)
        tracker.close(finished=finished)
    runs = all_runs(mlflow_server, "dpo-failed-test", "f1")
    assert sorted(r["tags"]["dpo.kind"] for r in runs) == ["pipeline", "train", "train"]
    assert {r["tags"].get("mlflow.parentRunId") for r in runs if r["tags"]["dpo.kind"] == "train"} == {parent["run_id"]}

    ended = log_request({**lifecycle, "status": "FAILED"}, env)
    assert ended["failures"] == {"mlflow": 0}
    status = {r["tags"].get("dpo.stage", "pipeline"): r["status"] for r in all_runs(mlflow_server, "dpo-failed-test", "f1")}
    assert status == {"pipeline": "FAILED", "train.lr_1": "FINISHED", "train.lr_2": "FAILED"}

    # A pipeline that fails before anything was tracked gets no run.
    assert log_request({**lifecycle, "run_id": "f2", "status": "FAILED"}, env)["failures"] == {"mlflow": 0}
    assert all_runs(mlflow_server, "dpo-failed-test", "f2") == []


def all_runs(uri: str, experiment: str, pipeline_run: str) -> list[dict]:
    return pipeline_runs_seen(uri, experiment, pipeline_run, '{"status": r.info.status, "tags": r.data.tags}')


def test_eval_metrics_join_the_train_stage_wandb_run(tmp_path, monkeypatch):
    import wandb
    from test_tracking_wandb import history_rows

    from dpo_trainer.wandb_tracker import WandbTracker, run_id_for

    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "dpo-test")
    tags = {"run_id": "w9", "stage": "train"}
    train = WandbTracker(tmp_path / "train-output", RunInfo("w9/train", {}, tags))
    for step in (1, 2, 3):
        train.log_metrics({"train/loss": 1.0 / step}, step)
    train.close()

    req = {**request(tmp_path, "w9"), "report_to": ["wandb"], "wandb_dir": str(tmp_path / "report-wandb")}
    req["evaluations"]["evaluate"]["step"] = 3
    answer = log_request(req, {})
    wandb.teardown()  # as the command's process does on exit: the run files are complete
    assert answer["failures"] == {"wandb": 0}
    folders = list((tmp_path / "report-wandb" / "train" / "wandb").glob(f"offline-run-*-{run_id_for(tags, None)}"))
    assert len(folders) == 1  # the train stage's run id: `wandb sync` appends it to that run
    rows = history_rows(folders[0])
    assert len(rows) == 1
    assert rows[0]["_step"] == 4 and rows[0]["train/global_step"] == 3  # one row after the last training row
    assert {k: rows[0][k] for k in METRICS} == pytest.approx(METRICS)

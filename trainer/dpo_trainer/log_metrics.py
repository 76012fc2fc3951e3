"""`python -m dpo_trainer.log_metrics REQUEST.json`: a pipeline's evaluation metrics, its report
and its MLflow run's lifecycle for the trackers of its run, through the same clients the trainer
uses (MLflow's REST client, TensorBoard's writer, wandb), so each tracker's protocol has one
implementation.

The report activity calls it once per report with

    {"report_to": ["tensorboard", "mlflow", "wandb"], "run_id": "...", "tags": {lineage},
     "evaluations": {"<stageId>": {"metrics": {"eval/dpo/rewards/accuracies": 0.75, ...},
                                   "step": 6, "tags": {"evaluates": "<train stageId>"}}},
     "tensorboard_dir": "<dir>",           # event files go to <dir>/<stageId>/
     "wandb_dir": "<dir>",                 # offline W&B runs go to <dir>/<train stageId>/wandb/
     "artifacts": [{"dir": "<folder>", "path": "report"}],
     "status": "FINISHED"}                 # for the pipeline's parent MLflow run

and the pipeline itself with only `report_to`, `run_id`, `tags` and `status`: RUNNING when it
starts (the parent MLflow run is created then, before any stage can race to create it), FAILED
or KILLED when it ends without a report. It prints one JSON line:
{"failures": {tracker: count}, "links": {tracker: page}}.

- MLflow: each evaluate stage is a run nested in the pipeline's parent run (`mlflow.parentRunId`,
  `dpo.kind=evaluate`), found again by its tags when the report is retried, so a retry logs into
  the same run; metrics the run already holds are not sent twice. The artifacts go to the parent
  run, which is then marked `status`. A pipeline that fails marks its parent run and the nested
  runs still open (a crashed stage's, left RUNNING for its resume) with its status; one that
  fails before any run exists creates none.
- W&B: an evaluation of a train stage's adapter goes to that stage's W&B run (the same run id,
  resumed), one row after its last training row.
- A tracker that is down never fails the report: each failed call is a warning on stderr and a
  count in the answer; the command exits 0 unless the request itself is malformed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .tracking import RunInfo, TensorBoardTracker

SUPPORTED = ("tensorboard", "mlflow", "wandb")
# How a pipeline ends without its report: nothing new is created for it.
UNSUCCESSFUL = ("FAILED", "KILLED")


def _warn(failures: dict[str, int], tracker: str, what: str, exc: BaseException) -> None:
    failures[tracker] = failures.get(tracker, 0) + 1
    print(f"warning: {tracker} {what} failed; the report goes on: {exc}", file=sys.stderr, flush=True)


def log_tensorboard(request: dict[str, Any], failures: dict[str, int]) -> None:
    for stage, evaluation in request.get("evaluations", {}).items():
        try:
            step = int(evaluation.get("step", 0))
            tags = {**request.get("tags", {}), "stage": stage, **evaluation.get("tags", {})}
            # start_step = step - 1: the writer's purge step is this step, so a retried report's
            # values replace the earlier attempt's in TensorBoard's view.
            writer = TensorBoardTracker(Path(request["tensorboard_dir"]) / stage, max(step - 1, 0), RunInfo(stage, {}, tags))
            writer.log_metrics(evaluation["metrics"], step)
            writer.close()
        except Exception as exc:  # noqa: BLE001 -- never the report's failure
            _warn(failures, "tensorboard", f"writing {stage}'s metrics", exc)


def log_mlflow(request: dict[str, Any], failures: dict[str, int], links: dict[str, str], env: dict[str, str]) -> None:
    from .mlflow_tracker import (
        DEFAULT_EXPERIMENT, MlflowRest, create_run, experiment_id_of, find_run, pipeline_run, proxied_artifact_path, upload_folder,
    )

    uri = env.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        _warn(failures, "mlflow", "starting", ValueError("MLFLOW_TRACKING_URI names no http(s) server in the worker's environment"))
        return
    rest = MlflowRest(uri, env)
    run_id: str = request["run_id"]
    tags: dict[str, str] = request.get("tags", {})
    status = request.get("status")
    try:
        experiment_id = experiment_id_of(rest, env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
        if status in UNSUCCESSFUL:
            parent = find_run(rest, experiment_id, {"dpo.run_id": run_id, "dpo.kind": "pipeline"})
            if parent is None:
                return  # the pipeline ended before anything was tracked
        else:
            parent = pipeline_run(rest, experiment_id, run_id, tags)
    except Exception as exc:  # noqa: BLE001
        _warn(failures, "mlflow", "finding the pipeline's run", exc)
        return
    parent_id = parent["info"]["run_id"]
    links["mlflow"] = f"{rest.uri}/#/experiments/{experiment_id}/runs/{parent_id}"
    now = int(time.time() * 1000)
    for stage, evaluation in request.get("evaluations", {}).items():
        try:
            extra = {f"dpo.{k}": v for k, v in evaluation.get("tags", {}).items()}
            run = find_run(rest, experiment_id, {"dpo.run_id": run_id, "dpo.stage": stage}) or create_run(
                rest, experiment_id, f"{run_id}/{stage}", {
                    **{f"dpo.{k}": v for k, v in tags.items()}, "dpo.run_id": run_id, "dpo.stage": stage,
                    "dpo.kind": "evaluate", "mlflow.parentRunId": parent_id, **extra})
            held = run.get("data", {}).get("metrics", [])
            have = {m["key"] for m in held}
            step = int(evaluation.get("step", 0))
            metrics = [{"key": k, "value": float(v), "timestamp": now, "step": step}
                       for k, v in evaluation["metrics"].items() if k not in have]
            for i in range(0, len(metrics), 1000):  # MLflow's limit of metrics per call
                rest.api("POST", "runs/log-batch", {"run_id": run["info"]["run_id"], "metrics": metrics[i:i + 1000]})
            rest.api("POST", "runs/update", {"run_id": run["info"]["run_id"], "status": "FINISHED", "end_time": now})
        except Exception as exc:  # noqa: BLE001
            _warn(failures, "mlflow", f"logging {stage}'s metrics", exc)
    for artifact in request.get("artifacts", []):
        try:
            path = proxied_artifact_path(parent)
            if path is None:
                raise RuntimeError("the server does not proxy artifacts (start it with --serve-artifacts)")
            upload_folder(rest, path, Path(artifact["dir"]), artifact["path"])
        except Exception as exc:  # noqa: BLE001
            _warn(failures, "mlflow", f"logging {artifact['path']}", exc)
    if status in UNSUCCESSFUL:
        try:
            close_open_stage_runs(rest, experiment_id, run_id, status)
        except Exception as exc:  # noqa: BLE001
            _warn(failures, "mlflow", "ending the stages' runs", exc)
    if status:
        try:
            ended = {"end_time": int(time.time() * 1000)} if status != "RUNNING" else {}
            rest.api("POST", "runs/update", {"run_id": parent_id, "status": status, **ended})
        except Exception as exc:  # noqa: BLE001
            _warn(failures, "mlflow", "ending the pipeline's run", exc)


def close_open_stage_runs(rest: Any, experiment_id: str, run_id: str, status: str) -> None:
    """The pipeline's stage runs still RUNNING (a crashed stage leaves its run open for the attempt
    that resumes it) end with the pipeline; a stage that runs again reopens its run."""
    runs = rest.api("POST", "runs/search", {
        "experiment_ids": [experiment_id], "max_results": 1000,
        "filter": f"tags.`dpo.run_id` = '{run_id}' and attributes.status = 'RUNNING'",
    }).get("runs", [])
    now = int(time.time() * 1000)
    for run in runs:
        if {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}.get("dpo.kind") != "pipeline":
            rest.api("POST", "runs/update", {"run_id": run["info"]["run_id"], "status": status, "end_time": now})


def log_wandb(request: dict[str, Any], failures: dict[str, int]) -> None:
    """Each evaluation of a train stage's adapter into that stage's W&B run (resumed by its id;
    offline without a key, into `wandb_dir/<train stage>/wandb/`, which the worker stores beside
    the stage's own offline runs so that `wandb sync` appends it)."""
    from .wandb_tracker import WandbTracker

    run_id: str = request["run_id"]
    for stage, evaluation in request.get("evaluations", {}).items():
        trained = evaluation.get("tags", {}).get("evaluates")
        if not trained:
            continue  # the base model only: no train stage's run to add it to
        tracker = None
        try:
            tags = {**request.get("tags", {}), "run_id": run_id, "stage": trained}
            tracker = WandbTracker(Path(request["wandb_dir"]) / trained, RunInfo(f"{run_id}/{trained}", {}, tags))
            tracker.log_evaluation(evaluation["metrics"], int(evaluation.get("step", 0)))
        except Exception as exc:  # noqa: BLE001
            _warn(failures, "wandb", f"logging {stage}'s metrics", exc)
        finally:
            if tracker is not None:
                try:
                    tracker.close()
                except Exception as exc:  # noqa: BLE001
                    _warn(failures, "wandb", f"closing {trained}'s run", exc)


def log_request(request: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ) if env is None else env
    failures: dict[str, int] = {}
    links: dict[str, str] = {}
    for name in request.get("report_to", []):
        if name not in SUPPORTED:
            continue
        failures.setdefault(name, 0)
        if name == "tensorboard":
            log_tensorboard(request, failures)
        elif name == "wandb":
            log_wandb(request, failures)
        else:
            log_mlflow(request, failures, links, env)
    return {"failures": failures, "links": links}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dpo_trainer.log_metrics REQUEST.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    print(json.dumps(log_request(request)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

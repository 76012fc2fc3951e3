"""`python -m dpo_trainer.log_metrics REQUEST.json`: a pipeline's evaluation metrics and report
for the trackers of its run, through the same MLflow REST client and TensorBoard writer the
trainer uses (one implementation of each tracker's protocol).

The report activity calls it once per report with

    {"report_to": ["tensorboard", "mlflow"], "run_id": "...", "tags": {lineage},
     "evaluations": {"<stageId>": {"metrics": {"eval/dpo/rewards/accuracies": 0.75, ...},
                                   "step": 6, "tags": {"evaluates": "<train stageId>"}}},
     "tensorboard_dir": "<dir>",           # event files go to <dir>/<stageId>/
     "artifacts": [{"dir": "<folder>", "path": "report"}],
     "status": "FINISHED"}                 # for the pipeline's parent MLflow run

and prints one JSON line: {"failures": {tracker: count}, "links": {tracker: page}}.

- MLflow: each evaluate stage is a run nested in the pipeline's parent run (`mlflow.parentRunId`,
  `dpo.kind=evaluate`), found again by its tags when the report is retried, so a retry logs into
  the same run; metrics the run already holds are not sent twice. The artifacts go to the parent
  run, which is then marked `status`.
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

SUPPORTED = ("tensorboard", "mlflow")


def _warn(failures: dict[str, int], tracker: str, what: str, exc: BaseException) -> None:
    failures[tracker] = failures.get(tracker, 0) + 1
    print(f"warning: {tracker} {what} failed; the report goes on: {exc}", file=sys.stderr, flush=True)


def log_tensorboard(request: dict[str, Any], failures: dict[str, int]) -> None:
    root = Path(request["tensorboard_dir"])
    for stage, evaluation in request.get("evaluations", {}).items():
        try:
            step = int(evaluation.get("step", 0))
            tags = {**request.get("tags", {}), "stage": stage, **evaluation.get("tags", {})}
            # start_step = step - 1: the writer's purge step is this step, so a retried report's
            # values replace the earlier attempt's in TensorBoard's view.
            writer = TensorBoardTracker(root / stage, max(step - 1, 0), RunInfo(stage, {}, tags))
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
    try:
        experiment_id = experiment_id_of(rest, env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
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
    if request.get("status"):
        try:
            rest.api("POST", "runs/update", {"run_id": parent_id, "status": request["status"], "end_time": int(time.time() * 1000)})
        except Exception as exc:  # noqa: BLE001
            _warn(failures, "mlflow", "ending the pipeline's run", exc)


def log_request(request: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ) if env is None else env
    failures: dict[str, int] = {}
    links: dict[str, str] = {}
    for name in request.get("report_to", []):
        if name not in SUPPORTED:
            continue  # W&B: training only (documented)
        failures.setdefault(name, 0)
        if name == "tensorboard":
            log_tensorboard(request, failures)
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

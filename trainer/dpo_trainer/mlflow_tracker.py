"""report_to: mlflow -- an MLflow tracking server, spoken to through its REST API.

The trainer does not import the mlflow package: its client would add some thirty packages to the
pinned training environment for a handful of HTTP calls. The calls are MLflow's documented REST
API (experiments/get-by-name, runs/search, runs/create, runs/log-batch, runs/update, the
mlflow-artifacts proxy), the same ones `mlflow.MlflowClient` makes; the tests read what was
logged back with the real client against the real server.

- Where: `MLFLOW_TRACKING_URI` (an http(s) server), experiment `MLFLOW_EXPERIMENT_NAME` (default
  `dpo-vlm`), as transformers' MLflowCallback reads them. `MLFLOW_TRACKING_TOKEN` (bearer) or
  `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` (basic) authenticate; they are read from
  the environment and never logged.
- Which run: one parent run per pipeline run (tag `dpo.run_id`) and a nested run per train stage
  (`dpo.stage`, `mlflow.parentRunId`), found by those tags, so a retried, resumed or continued
  stage logs into the run it already has: one MLflow run id per stage.
- No step twice: MLflow keeps every value logged for a step, so a resumed attempt skips the steps
  the run already holds (a resume reproduces them bit for bit: the same values).
- Never in the way: the loop only puts metrics on a queue; a daemon thread sends them in
  batches. A call that fails (server down, refused, 5xx) is counted, and its metrics are sent
  with the next batch.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .events import log

DEFAULT_EXPERIMENT = "dpo-vlm"
TIMEOUT_SECONDS = 10.0
# An artifact upload goes through the server to its store (S3: the first one imports boto3 there):
# give it longer. close() waits at most CLOSE_WAIT_SECONDS for the queue, then the trainer exits.
ARTIFACT_TIMEOUT_SECONDS = 60.0
CLOSE_WAIT_SECONDS = 120.0
MAX_BATCH = 1000  # MLflow's limit of metrics per log-batch call
MAX_PENDING = 100_000  # metrics kept while the server is down; older ones are dropped beyond
PARAM_VALUE_LIMIT = 6000  # MLflow's limit of a param value's length


class MlflowError(Exception):
    """A call the server refused or could not be reached for."""


class MlflowRest:
    """The few REST calls a tracker needs, with the environment's credentials."""

    def __init__(self, uri: str, env: dict[str, str]) -> None:
        self.uri = uri.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if env.get("MLFLOW_TRACKING_TOKEN"):
            self.headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
        elif env.get("MLFLOW_TRACKING_USERNAME"):
            pair = f"{env['MLFLOW_TRACKING_USERNAME']}:{env.get('MLFLOW_TRACKING_PASSWORD', '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None,
             data: bytes | None = None, timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
        url = f"{self.uri}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(url, data=payload, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode() or "{}"
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise MlflowError(f"{method} {path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise MlflowError(f"{method} {path}: {getattr(exc, 'reason', exc)}") from None
        return json.loads(text)

    def api(self, method: str, name: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None) -> dict[str, Any]:
        return self.call(method, f"/api/2.0/mlflow/{name}", body, query)


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


class MlflowTracker:
    name = "mlflow"

    def __init__(self, rest: MlflowRest, experiment: str, info: Any) -> None:
        self.rest = rest
        self.experiment = experiment
        self.info = info
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.artifact_path: str | None = None  # the run's folder behind the mlflow-artifacts proxy
        self.logged_through = 0  # the highest step the run already holds
        self.failures = 0
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._pending: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="mlflow-tracker", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, info: Any, env: dict[str, str] | None = None) -> MlflowTracker:
        env = dict(os.environ) if env is None else env
        uri = env.get("MLFLOW_TRACKING_URI", "")
        if not uri.startswith(("http://", "https://")):
            got = f", got a {uri.split(':')[0]!r} URI" if uri else ""
            raise InvalidInputError(
                "report_to: 'mlflow' needs MLFLOW_TRACKING_URI naming an MLflow tracking server (http:// or https://)"
                f" in the worker's environment{got}"
            )
        return cls(MlflowRest(uri, env), env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT, info)

    @property
    def link(self) -> str | None:
        """The run's page in the MLflow UI, once the run exists."""
        if self.run_id is None or self.experiment_id is None:
            return None
        return f"{self.rest.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    # -- the loop's side: never blocks -------------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._queue.put(("metrics", (metrics, step, int(time.time() * 1000))))

    def log_artifacts(self, folder: Path, path: str) -> None:
        self._queue.put(("artifacts", (folder, path)))

    def flush(self) -> None:
        pass  # the sender thread sends as soon as it can; close() waits for it

    def close(self, finished: bool = True, wait_seconds: float = CLOSE_WAIT_SECONDS) -> None:
        """Send what is queued (waiting at most `wait_seconds`); `finished`: the stage is done, so
        the run is marked FINISHED (a segment end or a preemption leaves it RUNNING)."""
        if not self._thread.is_alive():
            return
        self._queue.put(("close", finished))
        self._thread.join(wait_seconds)

    # -- the sender thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            kind, item = self._queue.get()
            if kind == "metrics":
                metrics, step, timestamp = item
                self._pending += [{"key": k, "value": float(v), "timestamp": timestamp, "step": step} for k, v in metrics.items()]
                del self._pending[:-MAX_PENDING]
                if self._queue.empty():
                    self._guard(self._send_pending)
            elif kind == "artifacts":
                self._guard(lambda: self._upload(*item))
            elif kind == "close":
                self._guard(self._send_pending)
                if item and self.run_id is not None:
                    self._guard(lambda: self.rest.api("POST", "runs/update", {
                        "run_id": self.run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)}))
                return

    def _guard(self, call: Any) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 -- the server's trouble is never training's
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log(f"warning: mlflow call failed ({self.failures} so far); retrying with the next step: {exc}")

    def _ensure_run(self) -> str:
        if self.run_id is not None:
            return self.run_id
        experiment_id = self.experiment_id = experiment_id_of(self.rest, self.experiment)
        tags = self.info.tags
        pipeline_run, stage = tags.get("run_id"), tags.get("stage")
        parent_id = pipeline_run_id(self.rest, experiment_id, pipeline_run, tags) if pipeline_run else None
        found = find_run(self.rest, experiment_id, {"dpo.run_id": pipeline_run, "dpo.stage": stage}) if pipeline_run and stage else None
        if found:
            run = found
            self.rest.api("POST", "runs/update", {"run_id": run["info"]["run_id"], "status": "RUNNING"})
            self.logged_through = self._last_step(run["info"]["run_id"])
        else:
            run = create_run(self.rest, experiment_id, self.info.run_name or stage or "train", {
                **{f"dpo.{k}": v for k, v in tags.items()}, "dpo.kind": "train",
                **({"mlflow.parentRunId": parent_id} if parent_id else {})})
            params = [{"key": k, "value": json.dumps(v) if not isinstance(v, str) else v} for k, v in self.info.hyperparameters.items()]
            for i in range(0, len(params), 100):  # MLflow's limit of params per call
                self.rest.api("POST", "runs/log-batch", {"run_id": run["info"]["run_id"], "params": [
                    {**p, "value": p["value"][:PARAM_VALUE_LIMIT]} for p in params[i:i + 100]]})
        self.run_id = run["info"]["run_id"]
        self.artifact_path = proxied_artifact_path(run)
        return self.run_id

    def _last_step(self, run_id: str) -> int:
        history = self.rest.api("GET", "metrics/get-history", query={"run_id": run_id, "metric_key": "train/loss", "max_results": "100000"})
        return max((int(m.get("step", 0)) for m in history.get("metrics", [])), default=0)

    def _send_pending(self) -> None:
        run_id = self._ensure_run()
        # Steps the run already holds (logged by an attempt this one resumed) are not sent again.
        self._pending = [m for m in self._pending if m["step"] > self.logged_through]
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            self.rest.api("POST", "runs/log-batch", {"run_id": run_id, "metrics": batch})
            del self._pending[:len(batch)]

    def _upload(self, folder: Path, path: str) -> None:
        self._ensure_run()
        if self.artifact_path is None:
            raise MlflowError("the server does not proxy artifacts (start it with --serve-artifacts); the adapter was not logged")
        upload_folder(self.rest, self.artifact_path, folder, path)


# -- runs and artifacts, shared by the trainer's tracker and `python -m dpo_trainer.log_metrics` --


def experiment_id_of(rest: MlflowRest, name: str) -> str:
    """The experiment's id, created when missing."""
    try:
        return rest.api("GET", "experiments/get-by-name", query={"experiment_name": name})["experiment"]["experiment_id"]
    except MlflowError as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
            raise
    return rest.api("POST", "experiments/create", {"name": name})["experiment_id"]


def find_run(rest: MlflowRest, experiment_id: str, tags: dict[str, str | None]) -> dict[str, Any] | None:
    """The oldest run carrying all these tags."""
    condition = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = rest.api("POST", "runs/search", {
        "experiment_ids": [experiment_id], "filter": condition, "max_results": 1, "order_by": ["attributes.start_time ASC"],
    }).get("runs", [])
    return runs[0] if runs else None


def create_run(rest: MlflowRest, experiment_id: str, name: str, tags: dict[str, str]) -> dict[str, Any]:
    return rest.api("POST", "runs/create", {
        "experiment_id": experiment_id, "run_name": name, "start_time": int(time.time() * 1000),
        "tags": _tags({"mlflow.runName": name, **tags})})["run"]


def pipeline_run(rest: MlflowRest, experiment_id: str, run_id: str, tags: dict[str, str]) -> dict[str, Any]:
    """The pipeline run's parent MLflow run (tags `dpo.run_id`, `dpo.kind=pipeline`), created by
    whichever stage logs first; `tags` (the lineage, without the stage) go on it when it is new."""
    found = find_run(rest, experiment_id, {"dpo.run_id": run_id, "dpo.kind": "pipeline"})
    return found or create_run(rest, experiment_id, run_id, {
        "dpo.run_id": run_id, "dpo.kind": "pipeline", **{f"dpo.{k}": v for k, v in tags.items() if k not in ("stage", "run_id")}})


def pipeline_run_id(rest: MlflowRest, experiment_id: str, run_id: str, tags: dict[str, str]) -> str:
    return str(pipeline_run(rest, experiment_id, run_id, tags)["info"]["run_id"])


def proxied_artifact_path(run: dict[str, Any]) -> str | None:
    """The run's folder behind the mlflow-artifacts proxy; None when the server does not proxy."""
    uri = run["info"].get("artifact_uri", "")
    return uri.split("mlflow-artifacts:", 1)[1].lstrip("/") if uri.startswith("mlflow-artifacts:") else None


def upload_folder(rest: MlflowRest, artifact_path: str, folder: Path, path: str) -> None:
    """Every file of `folder` as the run's artifacts under `path/`."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f"{path}/{file.relative_to(folder).as_posix()}"
        rest.call("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{artifact_path}/{urllib.parse.quote(rel)}",
                  data=file.read_bytes(), timeout=ARTIFACT_TIMEOUT_SECONDS)

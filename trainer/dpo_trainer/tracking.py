"""Experiment tracking: TRL's `report_to`, for the trackers users already look at.

The loop hands every optimizer step's metrics to `Trackers.log_step`; the integrations behind it
write them under transformers' names (`rewrite_logs`: `train/loss`, `train/rewards/margins`,
`train/learning_rate`, ...) at the optimizer step as x-axis, as TRL's DPOTrainer does.

Two rules shape this module:

- A tracker never fails or slows training. A call that raises is logged once per tracker as a
  warning, counted, and the tracker is tried again at the next step; the counts end up in the
  `finished` / `preempted` events (the stage summary). A tracker that cannot even start (its
  package is missing) is a configuration error instead, raised before the first step, since the
  user asked for it by name.
- A resumed run never shows a step twice. TensorBoard: every writer opens its event file with a
  purge step (the first step it will write), so TensorBoard drops what an earlier attempt in the
  same run directory wrote at or past that step -- steps computed after the checkpoint this run
  resumed from, which the resumed run computes again.
"""

from __future__ import annotations

import atexit
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import InvalidInputError
from .events import log

# Which metrics go under which prefix (transformers' rewrite_logs): the loop's are training ones.
TRAIN_PREFIX = "train/"


def rewrite_logs(metrics: dict[str, float], prefix: str = TRAIN_PREFIX) -> dict[str, float]:
    """transformers' names: `eval_*` keys under `eval/`, every other key under `prefix`."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        out[f"eval/{key[5:]}" if key.startswith("eval_") else f"{prefix}{key}"] = value
    return out


class Tracker(Protocol):
    name: str

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self, finished: bool = True) -> None: ...

    # Optional: `link` (str | None), where the run can be looked at once it exists.


@dataclass(frozen=True)
class RunInfo:
    """What a tracker shows about the run besides its curves."""

    run_name: str | None
    hyperparameters: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)  # lineage: run id, stage, config hash, ...


def parse_tags(pairs: list[str]) -> dict[str, str]:
    """`key=value` strings (the config file's run_tags) as a dict; the key may not be empty."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"run_tags: {pair!r} is not key=value")
        tags[key] = value
    return tags


def flat_hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as `lora.r`-style keys with scalar values (lists as JSON), which is what
    TensorBoard's hparams plugin and MLflow's params accept."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hyperparameters(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


class TensorBoardTracker:
    """Event files in `log_dir` (one directory per train stage), written with PyTorch's
    SummaryWriter, the writer transformers' TensorBoardCallback uses."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, start_step: int, info: RunInfo) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as exc:
            raise InvalidInputError(
                f"report_to: 'tensorboard' needs the tensorboard package in the trainer's environment"
                f" (the trainer's 'tracking' extra; `npm run setup` installs it): {exc}"
            ) from None
        log_dir.mkdir(parents=True, exist_ok=True)
        # purge_step: TensorBoard discards the events earlier writers in this directory wrote at
        # or past the first step this one writes.
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1)
        self.log_dir = log_dir
        # As transformers' TensorBoardCallback: the settings as text, and as hparams (written into
        # this run directory rather than the sub-run SummaryWriter.add_hparams would create).
        self.writer.add_text("args", "```json\n" + json.dumps(info.hyperparameters, indent=2) + "\n```", start_step)
        if info.tags:
            table = "| key | value |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in info.tags.items())
            self.writer.add_text("lineage", table, start_step)
        for summary in hparams({k: ("null" if v is None else v) for k, v in info.hyperparameters.items()}, {}):
            self.writer.file_writer.add_summary(summary)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        # Out to the file at once (a few KiB write): the file on disk is what a killed trainer
        # leaves and what the worker uploads, and a step takes seconds.
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self, finished: bool = True) -> None:
        self.writer.close()


SUPPORTED = ("tensorboard", "mlflow", "wandb")


@dataclass
class Trackers:
    """The trackers of one run, each guarded so that its failures are only counted."""

    trackers: list[Tracker] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # time spent in tracker calls, for the overhead figure

    @classmethod
    def start(cls, report_to: list[str], logging_dir: Path, start_step: int, info: RunInfo, output_dir: Path | None = None) -> Trackers:
        trackers: list[Tracker] = []
        for name in report_to:
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(logging_dir, start_step, info))
            elif name == "mlflow":
                from .mlflow_tracker import MlflowTracker

                trackers.append(MlflowTracker.from_env(info))
            elif name == "wandb":
                from .wandb_tracker import WandbTracker

                trackers.append(WandbTracker(output_dir or logging_dir.parent, info))  # -> <output_dir>/wandb/
            else:
                raise InvalidInputError(f"report_to: {name!r} is not supported here (supported: {', '.join(SUPPORTED)})")
        if trackers:
            log(f"reporting to {', '.join(t.name for t in trackers)} (logging_dir {logging_dir})")
        return cls(trackers, {t.name: 0 for t in trackers})

    def _guarded(self, tracker: Tracker, what: str, call: Any) -> None:
        started = time.perf_counter()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 -- a tracker must never stop training
            self.failures[tracker.name] += 1
            if self.failures[tracker.name] == 1 or self.failures[tracker.name] % 100 == 0:
                log(f"warning: {tracker.name} {what} failed ({self.failures[tracker.name]} so far); training goes on: {exc!r}")
        finally:
            self.seconds += time.perf_counter() - started

    def log_step(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        """One optimizer step's metrics (TRL's names), with `epoch` as TRL logs it."""
        values = rewrite_logs({**metrics, "epoch": epoch})
        for tracker in self.trackers:
            self._guarded(tracker, f"logging step {step}", lambda t=tracker: t.log_metrics(values, step))

    def flush(self) -> None:
        for tracker in self.trackers:
            self._guarded(tracker, "flush", tracker.flush)

    def log_artifacts(self, folder: Path, path: str) -> None:
        """A folder (the final adapter) for the trackers that keep artifacts."""
        for tracker in self.trackers:
            upload = getattr(tracker, "log_artifacts", None)
            if upload is not None:
                self._guarded(tracker, f"logging {path}", lambda u=upload: u(folder, path))

    def close(self, finished: bool = True) -> None:
        """`finished`: the stage is done; otherwise it goes on in another process (segment end,
        preemption, crash), and a tracker's run stays open for it."""
        for tracker in self.trackers:
            self._guarded(tracker, "close", lambda t=tracker: t.close(finished))

    def event_fields(self) -> dict[str, Any]:
        """For the stage summary (`finished` / `preempted` events): failures per tracker and the
        seconds spent in tracker calls; nothing when no tracker was asked for."""
        if not self.trackers:
            return {}
        # Trackers that send from a thread of their own count their failures there.
        failures = {t.name: self.failures[t.name] + int(getattr(t, "failures", 0)) for t in self.trackers}
        # Where each run can be looked at, for the report and `dpo status` (TensorBoard's event
        # files are the worker's to place; MLflow and online W&B runs have a page).
        links = {t.name: link for t in self.trackers if (link := getattr(t, "link", None))}
        return {"tracking": {"failures": failures, "seconds": round(self.seconds, 6), "links": links}}

    def __bool__(self) -> bool:
        return bool(self.trackers)


# Paths and file lists say nothing about the experiment; everything else is a hyperparameter.
NOT_HYPERPARAMETERS = frozenset(
    {"model_dir", "train_shards", "output_dir", "resume_from", "init_adapter", "ref_log_probs_files",
     "report_to", "logging_dir", "run_name", "run_tags"}
)


def start_trackers(config: Any, output_dir: Path, start_step: int) -> Trackers:
    """The trackers `config.report_to` names, for a run that continues after `start_step`."""
    from dataclasses import asdict

    settings = {k: v for k, v in asdict(config).items() if k not in NOT_HYPERPARAMETERS}
    info = RunInfo(config.run_name, flat_hyperparameters(settings), parse_tags(config.run_tags))
    logging_dir = Path(config.logging_dir) if config.logging_dir else output_dir / "runs"
    trackers = Trackers.start(list(config.report_to), logging_dir, start_step, info, output_dir)
    _open.append(trackers)
    return trackers


_open: list[Trackers] = []


@atexit.register
def close_open_trackers() -> None:
    """A crash leaves through an exception: still send what the trackers hold, leaving their runs
    open for the attempt that resumes (closing twice is harmless)."""
    while _open:
        _open.pop().close(finished=False)

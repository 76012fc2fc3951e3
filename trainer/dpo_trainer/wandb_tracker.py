"""report_to: wandb -- Weights & Biases, offline without network, online with a key.

As transformers' WandbCallback: project `WANDB_PROJECT` (default `dpo-vlm`), the settings as the
run's config, every step logged with `train/global_step` as its x-axis. Without `WANDB_API_KEY`
(and unless `WANDB_MODE` says otherwise) the run is offline: wandb writes it under
`<output_dir>/wandb/offline-run-*`, which the worker stores with the stage's outputs and
`wandb sync` uploads later. The key comes from the worker's environment only.

One W&B run per train stage: its id is derived from the pipeline run and the stage, and it is
opened with resume="allow", so a retried or resumed stage continues the same run; W&B keeps one
value per step (a step lower than the run's current one is dropped), and a resumed online run
skips the steps it already holds. Sweep branches share the pipeline run's group.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .events import log

DEFAULT_PROJECT = "dpo-vlm"


def run_id_for(tags: dict[str, str], run_name: str | None) -> str:
    """A W&B run id (letters and digits) stable across a stage's attempts."""
    key = f"{tags.get('run_id', '')}/{tags.get('stage', '')}" if tags.get("run_id") else (run_name or "")
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key.strip("/") else ""


class WandbTracker:
    name = "wandb"

    def __init__(self, directory: Path, info: Any) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise InvalidInputError(
                f"report_to: 'wandb' needs the wandb package in the trainer's environment (the trainer's"
                f" 'tracking' extra; `npm run setup` installs it): {exc}"
            ) from None
        self.wandb = wandb
        self.directory = directory
        self.info = info
        self.run: Any = None
        self.first_new_step = 0  # steps below this are already in a resumed run
        self.link: str | None = None  # the run's page (online runs; an offline run has none)

    def _ensure_run(self) -> Any:
        if self.run is not None:
            return self.run
        self.directory.mkdir(parents=True, exist_ok=True)
        env = os.environ
        mode = env.get("WANDB_MODE") or ("online" if env.get("WANDB_API_KEY") else "offline")
        tags = self.info.tags
        run_id = run_id_for(tags, self.info.run_name)
        self.run = self.wandb.init(
            project=env.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=self.info.run_name,
            id=run_id or None,
            resume="allow" if run_id else None,
            group=tags.get("run_id"),
            job_type="train",
            dir=str(self.directory),
            mode=mode,
            config={**self.info.hyperparameters, "lineage": dict(tags)},
            reinit="create_new",
            settings=self.wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run.define_metric("train/global_step")
        self.run.define_metric("*", step_metric="train/global_step", step_sync=True)
        self.first_new_step = int(getattr(self.run, "step", 0) or 0)
        self.link = getattr(self.run, "url", None) or None
        log(f"wandb: run {self.run.id} ({mode}) in {self.directory}")
        return self.run

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        run = self._ensure_run()
        if step < self.first_new_step:
            return
        run.log({**metrics, "train/global_step": step}, step=step)

    def log_evaluation(self, metrics: dict[str, float], step: int) -> None:
        """An evaluation of the stage's final adapter, on the training curves' x-axis at `step`
        (its last optimizer step), as W&B's next row: transformers' callback logs eval metrics
        without a step, one row after the last training row. A retried report finds the row in
        a resumed online run and skips it; offline, `wandb sync` keeps the first row of a step."""
        run = self._ensure_run()
        if self.first_new_step > step + 1:
            return
        run.log({**metrics, "train/global_step": step}, step=step + 1)

    def flush(self) -> None:
        pass  # wandb writes its run file as it goes

    def close(self, finished: bool = True) -> None:
        # A segment end or a preemption finishes this process's part; the next attempt resumes
        # the same run (resume="allow").
        if self.run is not None:
            self.run.finish()
            self.run = None

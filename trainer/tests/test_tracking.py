"""Experiment tracking (report_to): TensorBoard event files read back with TensorBoard's own
reader, across a crash and a resume; a failing tracker only counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from dpo_trainer.config import TrainConfig, parse_config
from dpo_trainer.errors import InvalidInputError
from dpo_trainer.tracking import RunInfo, Trackers, rewrite_logs

TRL_TAGS = {
    "train/loss", "train/rewards/chosen", "train/rewards/rejected", "train/rewards/accuracies",
    "train/rewards/margins", "train/logps/chosen", "train/logps/rejected", "train/learning_rate",
    "train/grad_norm", "train/epoch",
}


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: its accumulator applies the purge steps the writers recorded."""
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_steps(log_dir: Path, tag: str) -> list[int]:
    """Every step written for `tag`, in file order, purged or not."""
    steps = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def test_transformers_names():
    assert rewrite_logs({"loss": 1.0, "rewards/margins": 2.0, "eval_loss": 3.0}) == {
        "train/loss": 1.0, "train/rewards/margins": 2.0, "eval/loss": 3.0,
    }


def test_tensorboard_crash_then_resume_shows_each_step_once(reference_run, train_config, tmp_path, validate_events):
    _, reference = reference_run
    log_dir = tmp_path / "tb"
    settings = {"report_to": ["tensorboard"], "logging_dir": str(log_dir), "run_tags": ["run_id=r1", "stage=train"]}
    crashed = run_train(train_config(tmp_path, **settings), env={"DPO_FAULT_CRASH_AT_STEP": "4"})
    assert crashed.exit_code == 1
    # The crashed attempt wrote steps 1-3; its checkpoint holds step 2, so step 3 is redone.
    assert raw_steps(log_dir, "train/loss") == [1, 2, 3]
    resumed = run_train(train_config(tmp_path, resume_from=str(tmp_path / "checkpoints" / "step-00000002"), **settings))
    validate_events(resumed.events)
    assert resumed.exit_code == 0
    assert resumed.last["tracking"]["failures"] == {"tensorboard": 0}
    assert raw_steps(log_dir, "train/loss") == [1, 2, 3, 3, 4, 5, 6]  # on disk: step 3 twice

    shown = scalars(log_dir)
    assert TRL_TAGS <= shown.keys()
    for tag, points in shown.items():
        assert [step for step, _ in points] == [1, 2, 3, 4, 5, 6], tag
    # The values are the uninterrupted run's (stored as float32).
    expected = [e["metrics"]["loss"] for e in reference.of("step")]
    assert [v for _, v in shown["train/loss"]] == pytest.approx(expected, rel=1e-6)
    assert [v for _, v in shown["train/epoch"]] == pytest.approx([e["epoch"] for e in reference.of("step")], rel=1e-6)

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    texts = {tag: acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"] if tag.endswith("text_summary")}
    assert "run_id | r1" in texts["lineage/text_summary"]
    assert '"beta": 0.1' in texts["args/text_summary"]


class RefusingTracker:
    """A tracker whose server refuses every call until it is told to come back."""

    name = "refusing"

    def __init__(self) -> None:
        self.up = False
        self.logged: list[int] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        self.logged.append(step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_refusing_tracker_is_counted_and_tried_again():
    tracker = RefusingTracker()
    trackers = Trackers([tracker], {tracker.name: 0})
    trackers.log_step(1, 0.1, {"loss": 0.7})
    trackers.log_step(2, 0.2, {"loss": 0.6})
    tracker.up = True
    trackers.log_step(3, 0.3, {"loss": 0.5})
    assert tracker.logged == [3]
    assert trackers.event_fields()["tracking"]["failures"] == {"refusing": 2}


def test_report_to_and_run_tags_are_checked(train_config, tmp_path):
    with pytest.raises(InvalidInputError, match="report_to"):
        parse_config(TrainConfig, train_config(tmp_path, report_to=["tensorboard", "tensorboard"]))
    with pytest.raises(InvalidInputError, match="report_to"):
        parse_config(TrainConfig, train_config(tmp_path, report_to=["comet"]))
    with pytest.raises(InvalidInputError, match=r"run_tags\[0\]"):
        parse_config(TrainConfig, train_config(tmp_path, run_tags=["no-equals-sign"]))


def test_no_tracker_writes_nothing(tmp_path):
    trackers = Trackers.start([], tmp_path / "runs", 0, RunInfo(None, {}))
    assert not trackers and trackers.event_fields() == {}
    assert not (tmp_path / "runs").exists()

"""report_to: wandb without network (offline): the run folder is written under output_dir/wandb,
one W&B run id for a stage across a crash and its resume, read back with wandb's own reader of
its run files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import wandb

from conftest import run_train

from dpo_trainer.tracking import close_open_trackers
from dpo_trainer.wandb_tracker import run_id_for


def run_records(path: Path) -> list[bytes]:
    """The records of a W&B run file: its LevelDB-log framing (a ':W&B' header, 32 KiB blocks of
    checksum-length-type chunks), as wandb's own DataStore reads it."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    records, pending, block = [], b"", 32 * 1024
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a chunk header
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # FULL, FIRST
            pending = chunk
        else:  # MIDDLE, LAST
            pending += chunk
        if kind in (1, 4):
            records.append(pending)
    return records


def history_rows(run_dir: Path) -> list[dict[str, float]]:
    """Every history record of a run folder as {key: value}, decoded with wandb's own protobuf
    messages."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for data in run_records(next(run_dir.glob("run-*.wandb"))):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append({k: v for k, v in items.items() if isinstance(v, (int, float))})
    return rows


def logged_steps(run_dir: Path) -> list[int]:
    """The `train/global_step` of every history record of a run folder."""
    return [int(row["train/global_step"]) for row in history_rows(run_dir) if "train/global_step" in row]


def test_offline_run_across_a_crash_and_resume(reference_run, train_config, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "dpo-test")
    settings = {"report_to": ["wandb"], "run_name": "w1/train", "run_tags": ["run_id=w1", "stage=train"]}
    crashed = run_train(train_config(tmp_path, **settings), env={"DPO_FAULT_CRASH_AT_STEP": "4"})
    assert crashed.exit_code == 1
    close_open_trackers()  # what the crashed process does on its way out (atexit)
    resumed = run_train(train_config(tmp_path, resume_from=str(tmp_path / "checkpoints" / "step-00000002"), **settings))
    assert resumed.exit_code == 0 and resumed.last["tracking"]["failures"] == {"wandb": 0}
    # finish() hands the run's stream back to wandb's service, which closes (and flushes) its run
    # file on its own time; a trainer process waits for that on exit, as this does.
    wandb.teardown()

    run_id = run_id_for({"run_id": "w1", "stage": "train"}, None)
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2  # one folder per process, the same run id: `wandb sync` appends them
    assert logged_steps(runs[0]) == [1, 2, 3]
    assert logged_steps(runs[1]) == [3, 4, 5, 6]  # W&B keeps one value per step at sync

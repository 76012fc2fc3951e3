"""The parent-death watchdog and the worker's control file (pause, checkpoint interval, segment end)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from conftest import TRAINER, adapter_tensors, run_train

from dpo_trainer.watchdog import ParentWatchdog


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped by init yet) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_trainer_dies_with_its_parent(tmp_path):
    """parent -> child (running the watchdog); kill -9 the parent: the child is gone within seconds."""
    child_code = textwrap.dedent(
        """
        import time
        from dpo_trainer.watchdog import ParentWatchdog
        ParentWatchdog(poll_seconds=0.1).start()
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    parent_code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {child_code!r}], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=TRAINER, stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)


def test_polling_notices_a_changed_parent():
    """The portable path (no prctl): a parent pid that is no longer ours triggers the exit hook."""
    gone = threading.Event()
    dog = ParentWatchdog(poll_seconds=0.05, on_parent_gone=gone.set, parent_pid=os.getppid())
    dog.start()
    assert not gone.wait(0.3)
    dog.stop()
    ParentWatchdog(poll_seconds=0.05, on_parent_gone=gone.set, parent_pid=-1).start()
    assert gone.wait(2)


def _write_control(path: Path, **fields: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, path)


def test_segments_end_at_stop_at_step_and_chain_bitwise(reference_run, train_config, tmp_path):
    """Two segments (stop at step 3, then the rest) land on the uninterrupted run's adapter."""
    _, reference = reference_run
    control = tmp_path / "control.json"
    _write_control(control, stop_at_step=3)
    env = {"DPO_TRAINER_CONTROL_FILE": str(control)}
    first = run_train(train_config(tmp_path / "a"), env)
    assert first.exit_code == 75 and first.last["event"] == "preempted" and first.last["step"] == 3
    assert [e["step"] for e in first.of("step")] == [1, 2, 3]
    _write_control(control, stop_at_step=None)
    second = run_train(train_config(tmp_path / "b", resume_from=first.last["checkpoint_path"]), env)
    assert second.exit_code == 0, second.last
    assert [e["step"] for e in second.of("step")] == [4, 5, 6]
    final, expected = adapter_tensors(second.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"])
    assert all((final[k] == expected[k]).all() for k in expected)


def test_checkpoint_interval_from_the_control_file(train_config, tmp_path):
    control = tmp_path / "control.json"
    _write_control(control, checkpoint_every_steps=3)
    result = run_train(train_config(tmp_path / "out"), {"DPO_TRAINER_CONTROL_FILE": str(control)})
    assert result.exit_code == 0
    assert [e["step"] for e in result.of("checkpoint_saved")] == [3, 6]


def test_pause_holds_between_steps_and_changes_no_number(reference_run, train_config, tmp_path):
    _, reference = reference_run
    control = tmp_path / "control.json"
    _write_control(control, paused=True)
    threading.Timer(1.5, lambda: _write_control(control, paused=False)).start()
    started = time.monotonic()
    result = run_train(train_config(tmp_path / "out", max_steps=None), {"DPO_TRAINER_CONTROL_FILE": str(control)})
    assert result.exit_code == 0 and time.monotonic() - started >= 1.5
    assert [e["metrics"] for e in result.of("step")] == [e["metrics"] for e in reference.of("step")]

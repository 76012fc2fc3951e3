"""Two "nodes" on one machine: two separate torchrun launchers (`--nnodes 2 --node_rank 0|1`),
each with its own config naming its own local folders, meet at rank 0's rendezvous address and
form one job (gloo). This is how a gang of GPU workers starts the trainer, one launcher per
worker: rank 0's node alone reports and checkpoints, and the job lands on one process's
numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TRAINER, adapter_distance, adapter_distance_bound, adapter_tensors, parse_events
from dpo_trainer.checkpoint import complete_checkpoints
from test_distributed import free_port


def node_command(config_path, node_rank: int, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
            "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "dpo_trainer.train", "--config", str(config_path)]


def start_nodes(train_config, root: Path, env: dict[str, str] | None = None, **overrides) -> list[subprocess.Popen]:
    """One launcher per node, each with its own folder (its "local disk") and config."""
    port = free_port()
    launches = []
    for node_rank in (0, 1):
        node_dir = root / f"node-{node_rank}"
        node_dir.mkdir(parents=True, exist_ok=True)
        # 2 nodes x micro-batch 4 x accumulation 1 = 8 pairs per step, as the reference's 4 x 2.
        config = train_config(node_dir / "out", per_device_train_batch_size=4, gradient_accumulation_steps=1, device="cpu", **overrides)
        path = node_dir / "train.json"
        path.write_text(json.dumps(config))
        launches.append(subprocess.Popen(node_command(path, node_rank, port), cwd=TRAINER, text=True,
                                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    return launches


def node_events(stdout: str) -> list[dict]:
    return parse_events("\n".join(line for line in stdout.splitlines() if line.startswith('{"event"')))


def finish_nodes(launches: list[subprocess.Popen], timeout: float = 300) -> list[list[dict]]:
    """Each node's events once every launcher exited 0 (their pipes read to the end, so a long
    stderr cannot block a launcher)."""
    outputs = [p.communicate(timeout=timeout) for p in launches]
    for p, (_, err) in zip(launches, outputs):
        assert p.returncode == 0, err[-12000:]
    return [node_events(out) for out, _ in outputs]


@pytest.fixture(scope="module")
def two_node_run(train_config, tmp_path_factory) -> tuple[Path, list[list[dict]]]:
    """An uninterrupted two-node run: its folder and each node's events."""
    root = tmp_path_factory.mktemp("two-nodes")
    return root, finish_nodes(start_nodes(train_config, root))


def test_two_launchers_form_one_job(reference_run, two_node_run, validate_events):
    reference_config, reference = reference_run
    tmp_path, events = two_node_run
    validate_events(events[0])
    assert events[1] == []  # only rank 0's node reports
    started = events[0][0]
    assert (started["event"], started["world_size"]) == ("started", 2)
    ours = [e["metrics"]["loss"] for e in events[0] if e["event"] == "step"]
    theirs = [e["metrics"]["loss"] for e in reference.of("step")]
    assert len(ours) == 6 and max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-5
    assert [e["step"] for e in events[0] if e["event"] == "checkpoint_saved"] == [2, 4, 6]
    final = adapter_tensors(events[0][-1]["adapter_path"])
    assert adapter_distance(final, adapter_tensors(reference.last["adapter_path"])) < adapter_distance_bound(reference_config, reference)
    # Checkpoints and the adapter exist on rank 0's node only.
    assert not complete_checkpoints(tmp_path / "node-1" / "out")
    assert not any((tmp_path / "node-1" / "out").rglob("*.safetensors"))


def test_a_lost_node_stops_the_job_and_the_restarted_gang_lands_on_the_same_adapter(two_node_run, train_config, tmp_path):
    """kill -9 of one node mid-run: the surviving node's launcher exits with a failure (it must not
    hang holding its GPU), and both nodes restarted from rank 0's newest checkpoint finish on the
    uninterrupted two-node run's adapter."""
    expected = adapter_tensors(two_node_run[1][0][-1]["adapter_path"])

    crashed = start_nodes(train_config, tmp_path / "crashed", env={"DPO_FAULT_SLEEP_PER_STEP": "0.5"})
    rank0_out = tmp_path / "crashed" / "node-0" / "out"
    deadline = time.monotonic() + 240
    while not complete_checkpoints(rank0_out):
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    time.sleep(0.7)  # mid-step 3 (steps take >= 0.5 s here)
    os.killpg(crashed[1].pid, signal.SIGKILL)
    crashed[1].communicate(timeout=30)
    killed_at = time.monotonic()
    crashed[0].communicate(timeout=180)
    assert crashed[0].returncode != 0, "the surviving node finished a job that lost a node"
    print(f"survivor exited {crashed[0].returncode} {time.monotonic() - killed_at:.1f} s after the kill")
    newest = complete_checkpoints(rank0_out)[-1]
    assert 0 < newest.step < 6, "the run finished before the kill"

    events = finish_nodes(start_nodes(train_config, tmp_path / "restarted", resume_from=str(newest.path)))[0]
    assert events[0]["start_step"] == newest.step
    final = adapter_tensors(events[-1]["adapter_path"])
    assert final.keys() == expected.keys()
    assert all(bool((final[k] == expected[k]).all()) for k in final), "the restarted gang's adapter differs"

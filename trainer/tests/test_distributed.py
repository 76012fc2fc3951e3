"""Two processes through `accelerate launch --num_processes 2 --cpu` (gloo): each rank takes half
of every step's pairs, gradients are summed across ranks, and the run lands on the same numbers
as one process with the same pairs per step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys



from conftest import TRAINER, adapter_distance, adapter_distance_bound, adapter_tensors, parse_events, run_train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(config: dict, tmp_path) -> list[dict]:
    """The train events of `config` run by two processes (rank 0's stdout)."""
    proc, events = launch_two_processes(config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-12000:]
    return events


def two_process_command(config: dict, tmp_path) -> list[str]:
    """`accelerate launch` of the trainer on `config` (written to tmp_path) with two CPU processes."""
    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
            "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "dpo_trainer.train", "--config", str(path)]


def launch_two_processes(config: dict, tmp_path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The launcher's outcome and rank 0's train events, whatever the exit."""
    proc = subprocess.run(
        two_process_command(config, tmp_path),
        cwd=TRAINER, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True, timeout=300,
    )
    return proc, parse_events("\n".join(line for line in proc.stdout.splitlines() if line.startswith('{"event"')))


def test_two_processes_match_one(reference_run, train_config, tmp_path, validate_events):
    reference_config, reference = reference_run
    # 2 ranks x micro-batch 4 x accumulation 1 = 8 pairs per step, as the reference's 4 x 2.
    # No GPU here: accelerate's multi-process launcher (torchrun underneath) with device "cpu" -> gloo.
    config = train_config(tmp_path / "out", per_device_train_batch_size=4, gradient_accumulation_steps=1, device="cpu")
    events = launch_two(config, tmp_path)
    validate_events(events)
    started = events[0]
    assert (started["event"], started["world_size"], started["micro_batch"], started["grad_accum"]) == ("started", 2, 4, 1)
    assert sum(e["event"] == "started" for e in events) == 1  # rank 0 alone reports
    ours = [e["metrics"]["loss"] for e in events if e["event"] == "step"]
    theirs = [e["metrics"]["loss"] for e in reference.of("step")]
    assert len(ours) == 6 and max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-5
    final = adapter_tensors(events[-1]["adapter_path"])
    expected = adapter_tensors(reference.last["adapter_path"])
    # Summing gradients across ranks reorders float additions: equal up to float32 rounding, an
    # L2 bound derived in conftest (the max-abs difference is one badly conditioned element's).
    assert adapter_distance(final, expected) < adapter_distance_bound(reference_config, reference)
    assert [e["step"] for e in events if e["event"] == "checkpoint_saved"] == [2, 4, 6]



def test_step_level_losses_see_every_ranks_pairs(train_config, tmp_path, validate_events):
    # aot_unpaired sorts the whole step's log-ratios and sft averages over all its chosen tokens:
    # each rank must see the other's pairs (Distributed.gather_shards, a summed token count).
    options = {"loss_type": ["aot_unpaired", "sft"], "label_smoothing": 0.1, "max_steps": 2}
    one_config = train_config(tmp_path / "one", **options)
    one = run_train(one_config)
    assert one.exit_code == 0, one.last
    events = launch_two(train_config(tmp_path / "two", per_device_train_batch_size=4, gradient_accumulation_steps=1,
                                     device="cpu", **options), tmp_path)
    validate_events(events)
    ours = [e["metrics"] for e in events if e["event"] == "step"]
    theirs = [e["metrics"] for e in one.of("step")]
    assert len(ours) == 2
    for a, b in zip(ours, theirs):
        for name in ("loss", "rewards/margins", "logps/chosen"):
            assert abs(a[name] - b[name]) < 1e-5, name
    distance = adapter_distance(adapter_tensors(events[-1]["adapter_path"]), adapter_tensors(one.last["adapter_path"]))
    assert distance < adapter_distance_bound(one_config, one)

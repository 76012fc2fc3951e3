"""FSDP2 with two processes (`fsdp: true`, gloo on CPU): the model sharded per decoder layer + root
lands on the same per-step losses as one process with the same pairs per step, and a checkpoint
written sharded at world size 2 (gathered unsharded onto rank 0) resumes in one process onto the
uninterrupted run's numbers; also the other direction, a precomputed reference, micro-batches with
an image on one rank only, padding-free with gradient checkpointing, SIGTERM, OOM and merge_model."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import torch

from conftest import TRAINER, adapter_distance, adapter_distance_bound, adapter_tensors, parse_events, run_train
from test_distributed import launch_two, launch_two_processes, two_process_command
from test_reference import run_reference


def losses(events: list[dict]) -> list[float]:
    return [e["metrics"]["loss"] for e in events if e["event"] == "step"]


def test_fsdp_two_processes_match_one_and_resume_at_world_size_one(reference_run, train_config, tmp_path, validate_events):
    reference_config, reference = reference_run
    # 2 ranks x micro-batch 4 x accumulation 1 = 8 pairs per step, as the reference's 4 x 2.
    config = train_config(tmp_path / "out", per_device_train_batch_size=4, gradient_accumulation_steps=1, device="cpu",
                          fsdp=True)
    events = launch_two(config, tmp_path)
    validate_events(events)
    assert (events[0]["event"], events[0]["world_size"]) == ("started", 2)
    ours, theirs = losses(events), losses(reference.events)
    assert len(ours) == 6 and max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-5
    # Every adapter weight, the root unit's (vision tower, projector) included, gathered from the shards.
    bound = adapter_distance_bound(reference_config, reference)
    assert adapter_distance(adapter_tensors(events[-1]["adapter_path"]), adapter_tensors(reference.last["adapter_path"])) < bound
    saved = [e for e in events if e["event"] == "checkpoint_saved"]
    assert [e["step"] for e in saved] == [2, 4, 6]

    # The checkpoint at step 2 holds the unsharded adapter and optimizer state in the
    # single-process format: one process resumes from it onto the uninterrupted run.
    state = torch.load(f"{saved[0]['path']}/trainer_state.pt", weights_only=True)
    assert sorted(state["optimizer"]["state"]) == list(range(len(state["optimizer"]["param_groups"][0]["params"])))
    resumed = run_train(train_config(tmp_path / "resumed", resume_from=saved[0]["path"]))
    assert resumed.exit_code == 0, resumed.last
    assert [e["step"] for e in resumed.of("step")] == [3, 4, 5, 6]
    assert max(abs(a - b) for a, b in zip(losses(resumed.events), theirs[2:])) < 1e-5
    distance = adapter_distance(adapter_tensors(resumed.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"]))
    assert distance < bound


def test_fsdp_resumes_a_single_process_checkpoint(reference_run, train_config, tmp_path, validate_events):
    # The other direction: one process's checkpoint (torch's integer-keyed optimizer state) is
    # sharded onto two ranks at resume (set_optimizer_state_dict) and lands on the same numbers.
    reference_config, reference = reference_run
    step4 = next(e for e in reference.of("checkpoint_saved") if e["step"] == 4)
    config = train_config(tmp_path / "out", per_device_train_batch_size=2, gradient_accumulation_steps=2, device="cpu",
                          fsdp=True, resume_from=step4["path"])
    events = launch_two(config, tmp_path)
    validate_events(events)
    assert [e["step"] for e in events if e["event"] == "step"] == [5, 6]
    assert max(abs(a - b) for a, b in zip(losses(events), losses(reference.events)[4:])) < 1e-5
    distance = adapter_distance(adapter_tensors(events[-1]["adapter_path"]), adapter_tensors(reference.last["adapter_path"]))
    assert distance < adapter_distance_bound(reference_config, reference)


def test_fsdp_out_of_memory_ends_the_run_instead_of_waiting(train_config, tmp_path):
    # Sharded, the other ranks may be inside the forward's all-gathers when one runs out of
    # memory, where no agreement to back off can reach them: the run ends with the out-of-memory
    # exit (the workflow replans) instead of hanging or backing off on one rank alone.
    config = train_config(tmp_path / "out", per_device_train_batch_size=4, gradient_accumulation_steps=1, device="cpu",
                          fsdp=True, max_steps=1)
    proc, events = launch_two_processes(config, tmp_path, env={"DPO_FAULT_OOM_ABOVE_MICRO_BATCH": "0"})
    assert proc.returncode != 0  # the ranks exit 76; the launcher reports any failed rank as 1
    assert not [e for e in events if e["event"] == "oom_backoff"]
    assert events[-1]["event"] == "error" and events[-1]["error_type"] == "OutOfMemory", events[-1]


def test_fsdp_with_a_precomputed_reference(reference_run, train_config, tiny_model_dir, demo_shards, tmp_path, validate_events):
    # The reference's log-probs from files instead of the sharded model with the adapter off.
    reference = run_reference({"model_dir": str(tiny_model_dir), "shards": [str(p) for p in demo_shards[0]],
                               "output_dir": str(tmp_path / "reference"), "batch_size": 16})
    assert reference.exit_code == 0, reference.last
    config = train_config(tmp_path / "out", per_device_train_batch_size=4, gradient_accumulation_steps=1, device="cpu",
                          fsdp=True, precompute_ref_log_probs=True,
                          ref_log_probs_files=[f"{reference.last['path']}/ref_logps.parquet"])
    events = launch_two(config, tmp_path)
    validate_events(events)
    ours, theirs = losses(events), losses(reference_run[1].events)
    assert len(ours) == 6 and max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-5


def test_fsdp_with_micro_batches_without_images(train_config, tiny_model_dir, demo_shards, tmp_path, validate_events):
    # A rank whose micro-batch has no image skips the vision tower while the other runs it: with
    # the vision tower in the root unit and unused parameters reduced as zeros, neither waits on
    # the other, and the numbers are the one-process run's.
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoConfig

    image_token = AutoConfig.from_pretrained(tiny_model_dir).image_token_id
    rows = pq.read_table(demo_shards[0][0]).to_pylist()
    for row in rows[1::2]:  # every other pair text-only
        row["image"] = None
        row["prompt_input_ids"] = [t for t in row["prompt_input_ids"] if t != image_token]
    mixed = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(demo_shards[0][0])), mixed)
    options = {"train_shards": [str(mixed)], "max_steps": 2}
    one = run_train(train_config(tmp_path / "one", **options))
    assert one.exit_code == 0, one.last
    # Micro-batch 1: many micro-batches hold a pair with an image on one rank and none on the other.
    events = launch_two(train_config(tmp_path / "two", per_device_train_batch_size=1, gradient_accumulation_steps=4,
                                     device="cpu", fsdp=True, **options), tmp_path)
    validate_events(events)
    ours, theirs = losses(events), losses(one.events)
    assert len(ours) == 2 and max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-5
    assert adapter_tensors(events[-1]["adapter_path"]).keys() == adapter_tensors(one.last["adapter_path"]).keys()


def test_fsdp_with_padding_free_batches_and_gradient_checkpointing(reference_run, train_config, tmp_path, validate_events):
    # Both change what runs inside each decoder layer (packed sequences, recomputation in backward),
    # not the units' order: the same losses as the padded one-process run.
    config = train_config(tmp_path / "out", per_device_train_batch_size=4, gradient_accumulation_steps=1, device="cpu",
                          fsdp=True, padding_free=True, gradient_checkpointing=True)
    events = launch_two(config, tmp_path)
    validate_events(events)
    ours, theirs = losses(events), losses(reference_run[1].events)
    assert len(ours) == 6 and max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-5


def test_fsdp_refuses_merge_model_naming_the_field(train_config, tmp_path):
    config = train_config(tmp_path / "out", device="cpu", fsdp=True, merge_model=True)
    proc, events = launch_two_processes(config, tmp_path)
    assert proc.returncode != 0
    assert events[-1]["error_type"] == "InvalidInput" and events[-1]["message"].startswith("merge_model:"), events[-1]


def test_fsdp_sigterm_checkpoints_on_every_rank_and_resumes(reference_run, train_config, tmp_path, validate_events):
    # SIGTERM to the launcher, which forwards it to both ranks: they agree at the next step
    # boundary, gather the checkpoint together, and rank 0 reports `preempted`; one process
    # resumes from that checkpoint onto the uninterrupted run.
    reference_config, reference = reference_run
    config = train_config(tmp_path / "out", per_device_train_batch_size=4, gradient_accumulation_steps=1, device="cpu",
                          fsdp=True, preemption_grace_seconds=20)
    proc = subprocess.Popen(
        two_process_command(config, tmp_path),
        cwd=TRAINER, env={**os.environ, "OMP_NUM_THREADS": "1", "DPO_FAULT_SLEEP_PER_STEP": "1.0"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    events: list[dict] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith('{"event"'):
                events.extend(parse_events(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(e["event"] == "step" and e["step"] == 2 for e in events):
        assert time.monotonic() < deadline and proc.poll() is None, events
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)  # the launcher itself exits 1 (torch elastic's SignalException), not 75
    reader.join(timeout=5)
    validate_events(events)
    preempted = events[-1]
    assert preempted["event"] == "preempted" and 2 <= preempted["step"] < 6, events[-3:]
    resumed = run_train(train_config(tmp_path / "resumed", resume_from=preempted["checkpoint_path"]))
    assert resumed.exit_code == 0, resumed.last
    assert max(abs(a - b) for a, b in zip(losses(resumed.events), losses(reference.events)[preempted["step"]:])) < 1e-5
    distance = adapter_distance(adapter_tensors(resumed.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"]))
    assert distance < adapter_distance_bound(reference_config, reference)

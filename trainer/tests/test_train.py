"""Training runs on the tiny model: events, checkpoints, exact resume, preemption, OOM backoff and
input errors. Most runs are in-process (`run_train`, ~20 s of imports saved per run); the SIGTERM
test spawns the real CLI. A crash (DPO_FAULT_CRASH_AT_STEP) stands in for SIGKILL: both leave only
what was stored before the process died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import (
    TRAINER,
    RunResult,
    adapter_distance,
    adapter_distance_bound,
    adapter_tensors,
    parse_events,
    run_evaluate,
    run_train,
)

from dpo_trainer.checkpoint import load_trainer_state, sha256_file


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_fresh_run(reference_run, validate_events):
    config, result = reference_run
    validate_events(result.events)
    assert [e["event"] for e in result.events[:2]] == ["started", "step"]
    started = result.of("started")[0]
    assert (started["total_steps"], started["samples"], started["micro_batch"], started["grad_accum"]) == (6, 48, 4, 2)
    assert [e["step"] for e in result.of("step")] == [1, 2, 3, 4, 5, 6]
    assert result.of("step")[-1]["epoch"] == 1.0
    assert [e["step"] for e in result.of("checkpoint_saved")] == [2, 4, 6]
    assert result.last["event"] == "finished" and result.last["step"] == 6
    # Warmup then cosine decay: the rate rises for ceil(0.2 * 6) = 2 steps, then falls.
    rates = [e["metrics"]["learning_rate"] for e in result.of("step")]
    assert rates[0] < rates[1] and rates[1] > rates[-1]


def test_lora_weights_changed_and_load_with_load_adapter(reference_run, tiny_model_dir, demo_shards):
    from transformers import AutoModelForImageTextToText

    from dpo_trainer.data import PixelCache, collate, load_shards
    from dpo_trainer.modeling import load_base_model

    _, result = reference_run
    adapter = result.last["adapter_path"]
    weights = adapter_tensors(adapter)
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert any("vision_tower" in n for n in weights) and any("multi_modal_projector" in n for n in weights)
    assert lora_b and all(float(w.abs().max()) > 0 for w in lora_b)  # B starts at zero
    # The seed's inference path: base model + model.load_adapter(path) changes the outputs.
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    tuned = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    tuned.load_adapter(adapter)
    loaded = load_base_model(str(tiny_model_dir), torch.float32, torch.device("cpu"))
    batch = collate(load_shards([str(demo_shards[1][0])]).rows([0, 1]), 3, PixelCache(loaded.image_processor))
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "pixel_values": batch.pixel_values}
    with torch.no_grad():
        assert not torch.allclose(base(**inputs).logits, tuned(**inputs).logits, atol=1e-4)


def test_checkpoints_are_complete(reference_run):
    config, result = reference_run
    for event in result.of("checkpoint_saved"):
        folder = Path(event["path"])
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["step"] == event["step"] and folder.name == f"step-{event['step']:08d}"
        assert sorted(e["path"] for e in manifest["files"]) == sorted(event["files"])
        expected_files = {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "trainer_state.pt"}
        assert expected_files <= set(event["files"])
        for entry in manifest["files"]:
            assert sha256_file(folder / entry["path"]) == entry["sha256"]
        state = load_trainer_state(folder)
        assert state["step"] == event["step"] and len(state["history"]) == event["step"]
        assert {"optimizer", "scheduler", "rng", "cursor"} <= state.keys()
        assert state["cursor"] == {"epoch": 0 if event["step"] < 6 else 1, "offset": (8 * event["step"]) % 48}
    final = Path(result.last["adapter_path"]).parent
    assert json.loads((final / "manifest.json").read_text())["step"] == 6
    assert not list(Path(config["output_dir"]).glob("**/.tmp-*"))


def test_crash_then_resume_is_bitwise_exact(reference_run, train_config, tmp_path, validate_events):
    _, reference = reference_run
    crashed = run_train(train_config(tmp_path), env={"DPO_FAULT_CRASH_AT_STEP": "4"})
    validate_events(crashed.events)
    assert crashed.exit_code == 1 and crashed.last["error_type"] == "Crash"
    checkpoint = tmp_path / "checkpoints" / "step-00000002"
    # What a SIGKILL during a checkpoint write leaves: a half-written temporary folder. It has no
    # manifest, so it is never resumed from, and the next run clears it away.
    half_written = tmp_path / "checkpoints" / ".tmp-step-00000004-99999"
    (half_written / "adapter").mkdir(parents=True)
    resumed = run_train(train_config(tmp_path, resume_from=str(checkpoint)))
    assert not half_written.exists()
    validate_events(resumed.events)
    assert resumed.exit_code == 0 and resumed.of("started")[0]["start_step"] == 2
    assert [e["step"] for e in resumed.of("step")] == [3, 4, 5, 6]
    # Same samples, same numbers: every step's loss and the final adapter match exactly.
    assert [e["metrics"] for e in resumed.of("step")] == [e["metrics"] for e in reference.of("step")[2:]]
    final, expected = adapter_tensors(resumed.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"])
    assert max_abs_diff(final, expected) == 0.0


def test_resume_with_half_micro_batch_and_double_accumulation(reference_run, train_config, tmp_path):
    reference_config, reference = reference_run
    checkpoint = Path(reference_config["output_dir"]) / "checkpoints" / "step-00000004"
    resumed = run_train(
        train_config(tmp_path, resume_from=str(checkpoint),
                     per_device_train_batch_size=2, gradient_accumulation_steps=4)
    )
    assert resumed.exit_code == 0, resumed.last
    assert resumed.of("started")[0]["micro_batch"] == 2
    # Steps 5-6 sum in another order: equal up to float32 rounding (bound derived in conftest).
    distance = adapter_distance(adapter_tensors(resumed.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"]))
    assert distance < adapter_distance_bound(reference_config, reference)


def test_resume_refuses_a_different_run(reference_run, train_config, tmp_path):
    reference_config, _ = reference_run
    checkpoint = Path(reference_config["output_dir"]) / "checkpoints" / "step-00000002"
    result = run_train(train_config(tmp_path, resume_from=str(checkpoint), seed=4, per_device_train_batch_size=8))
    assert result.exit_code == 65 and result.last["error_type"] == "InvalidInput"
    assert "seed" in result.last["message"] and "effective_batch_size" in result.last["message"]


def test_oom_backoff_keeps_the_effective_batch(reference_run, train_config, tmp_path, validate_events):
    reference_config, reference = reference_run
    result = run_train(train_config(tmp_path), env={"DPO_FAULT_OOM_ABOVE_MICRO_BATCH": "1"})
    validate_events(result.events)
    assert result.exit_code == 0, result.last
    backoffs = [(e["step"], e["micro_batch"], e["grad_accum"]) for e in result.of("oom_backoff")]
    assert backoffs == [(1, 2, 4), (1, 1, 8)]
    assert [e["step"] for e in result.of("step")] == [1, 2, 3, 4, 5, 6]
    # 8 micro-batches of 1 instead of 2 of 4: the same sums in another order, so the adapters agree
    # to float32 rounding -- an L2 bound of sqrt(P) * eps * N * sum(lr) (~3e-4 here, derived in
    # conftest), not one CPU's max-abs difference. Measured on a 2-core AMD EPYC: 1.6e-5 (split
    # 1x8), 2.4e-5 (2x4), 2.0e-5 (8x1); a backoff whose accumulation is not doubled (2 of the 8
    # pairs per step) lands 1.4 away, one that averages per micro-batch (gradient clipped 8x
    # harder) 7e-2. The backed-off run is bitwise equal to a fresh run at micro-batch 1 x 8.
    distance = adapter_distance(adapter_tensors(result.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"]))
    assert distance < adapter_distance_bound(reference_config, reference)


def test_oom_gives_up_with_exit_76(train_config, tmp_path, validate_events):
    result = run_train(train_config(tmp_path, max_steps=1), env={"DPO_FAULT_OOM_ABOVE_MICRO_BATCH": "0"})
    validate_events(result.events)
    assert result.exit_code == 76 and result.last["error_type"] == "OutOfMemory"
    assert result.of("oom_backoff")[-1]["gradient_checkpointing"] is True
    for attempt in ("micro_batch=4", "micro_batch=2", "micro_batch=1 gradient_checkpointing=True"):
        assert attempt in result.last["message"]


def test_invalid_config_names_the_field(train_config, tmp_path, validate_events):
    result = run_train(train_config(tmp_path, learning_rate=-1.0, lora={"r": 4, "rank": 2}, warmup_steps=3))
    validate_events(result.events)
    assert result.exit_code == 65 and result.last["error_type"] == "InvalidInput"
    for field in ("learning_rate", "lora.rank", "warmup_steps"):
        assert field in result.last["message"]


def test_bad_inputs_exit_65(train_config, tmp_path, demo_shards):
    missing_model = run_train(train_config(tmp_path / "a", model_dir=str(tmp_path / "nowhere")))
    assert (missing_model.exit_code, missing_model.last["error_type"]) == (65, "ModelLoadError")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    bad_shard = run_train(train_config(tmp_path / "b", train_shards=[str(corrupt)]))
    assert (bad_shard.exit_code, bad_shard.last["error_type"]) == (65, "InvalidInput")
    assert str(corrupt) in bad_shard.last["message"]


def test_image_shards_on_a_text_only_model_exit_65(train_config, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text_model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    text_model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    result = run_train(train_config(tmp_path / "out", model_dir=str(tmp_path / "llama")))
    assert (result.exit_code, result.last["error_type"]) == (65, "InvalidInput")
    assert "no vision tower" in result.last["message"]


def test_evaluate_base_and_adapter(reference_run, tiny_model_dir, demo_shards, validate_events):
    _, reference = reference_run
    common = {"model_dir": str(tiny_model_dir), "shards": [str(p) for p in demo_shards[1]], "batch_size": 8}
    base = run_evaluate(common)
    tuned = run_evaluate({**common, "adapter_dir": reference.last["adapter_path"]})
    validate_events(base.events + tuned.events)
    assert base.exit_code == tuned.exit_code == 0
    base_metrics, tuned_metrics = base.last["metrics"], tuned.last["metrics"]
    assert base_metrics["samples"] == 16
    assert base_metrics["reward_accuracy"] == base_metrics["reward_margin_mean"] == 0
    assert tuned_metrics["reward_margin_mean"] != 0
    assert tuned_metrics["logp_margin_mean"] != base_metrics["logp_margin_mean"]
    missing = run_evaluate({**common, "adapter_dir": "/nonexistent"})
    assert (missing.exit_code, missing.last["error_type"]) == (65, "ModelLoadError")


def test_completion_logps_mask_the_prompt(tiny_model_dir, demo_shards):
    from dpo_trainer.data import PixelCache, collate, load_shards
    from dpo_trainer.modeling import completion_logps, load_base_model

    loaded = load_base_model(str(tiny_model_dir), torch.float32, torch.device("cpu"))
    rows = load_shards([str(demo_shards[1][0])]).rows([0, 1, 2])
    batch = collate(rows, loaded.spec.pad_token_id, PixelCache(loaded.image_processor))
    with torch.no_grad():
        logps, counts = completion_logps(loaded.model, batch)
        logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              pixel_values=batch.pixel_values).logits.log_softmax(-1)
    for i, (row, column) in enumerate([(r, c) for c in ("chosen_input_ids", "rejected_input_ids") for r in rows]):
        start, completion = len(row["prompt_input_ids"]), row[column]
        expected = sum(float(logits[i, start + t - 1, token]) for t, token in enumerate(completion))
        assert float(logps[i]) == pytest.approx(expected, abs=1e-4)
        assert int(counts[i]) == len(completion)


# ----------------------------------------------------------------------------------------------
# The real CLI under SIGTERM (graceful: checkpoint, exit 75)


class CliRun:
    """`python -m dpo_trainer.train` in a subprocess, its stdout events collected as they come."""

    def __init__(self, config: dict, config_path: Path, env: dict[str, str]):
        config_path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dpo_trainer.train", "--config", str(config_path)],
            cwd=TRAINER, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, **env},
        )
        self.events: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.extend(parse_events(line))

    def wait_for(self, predicate, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if predicate(event):
                    return event
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"event not seen; got {self.events}")

    def finish(self, timeout: float = 60) -> RunResult:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return RunResult(code, self.events)


def test_sigterm_checkpoints_and_exits_75(reference_run, train_config, tmp_path, validate_events):
    """The real CLI under SIGTERM; then resume it with a halved micro-batch."""
    reference_config, reference = reference_run
    run = CliRun(train_config(tmp_path, preemption_grace_seconds=10), tmp_path / "term.json",
                 {"DPO_FAULT_SLEEP_PER_STEP": "1.0"})
    run.wait_for(lambda e: e["event"] == "step" and e["step"] == 3)
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    terminated = run.finish()
    assert time.monotonic() - sent < 10  # within preemption_grace_seconds

    validate_events(terminated.events)
    assert terminated.exit_code == 75
    preempted = terminated.last
    assert preempted["event"] == "preempted" and 3 <= preempted["step"] < 6
    folder = Path(preempted["checkpoint_path"])
    assert json.loads((folder / "manifest.json").read_text())["step"] == preempted["step"]

    resumed = run_train(train_config(tmp_path, resume_from=str(folder),
                                     per_device_train_batch_size=2, gradient_accumulation_steps=4))
    assert resumed.exit_code == 0, resumed.last
    # The resumed steps sum in another order: equal up to float32 rounding (bound in conftest).
    distance = adapter_distance(adapter_tensors(resumed.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"]))
    assert distance < adapter_distance_bound(reference_config, reference)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_with_gradient_checkpointing(train_config, tmp_path, dtype, validate_events):
    result = run_train(train_config(tmp_path, dtype=dtype, gradient_checkpointing=True, max_steps=1,
                                    per_device_train_batch_size=2, gradient_accumulation_steps=1))
    validate_events(result.events)
    assert result.exit_code == 0, result.last
    assert all(e["metrics"]["loss"] is not None for e in result.of("step"))

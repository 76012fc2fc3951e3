"""The sft objective (supervised fine-tuning on the chosen answers before DPO) on the tiny model:
loss on the assistant tokens only, TRL SFTTrainer's metric names, exact resume, OOM backoff,
the merged model, and config errors. Its parity with TRL's own SFTTrainer is in
test_sft_parity.py."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import adapter_distance, adapter_distance_bound, adapter_tensors, run_train

from dpo_trainer.checkpoint import sha256_file
from dpo_trainer.data import PixelCache, collate, load_shards
from dpo_trainer.modeling import completion_token_stats, load_base_model

SFT_METRICS = {"loss", "mean_token_accuracy", "entropy", "num_tokens", "learning_rate", "grad_norm"}


@pytest.fixture(scope="module")
def sft_run(train_config, tmp_path_factory):
    config = train_config(tmp_path_factory.mktemp("sft"), objective="sft", merge_model=True)
    result = run_train(config)
    assert result.exit_code == 0, result.events[-1]
    return config, result


def test_sft_run_reports_sfttrainer_metrics(sft_run, validate_events, demo_shards):
    config, result = sft_run
    validate_events(result.events)
    steps = result.of("step")
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(set(e["metrics"]) == SFT_METRICS for e in steps)
    # num_tokens: every non-padding token of the prompt + chosen rows trained on so far; one epoch
    # sees each row once.
    table = load_shards(config["train_shards"]).table
    prompt = sum(len(r) for r in table.column("prompt_input_ids").to_pylist())
    chosen = sum(len(r) for r in table.column("chosen_input_ids").to_pylist())
    assert steps[-1]["metrics"]["num_tokens"] == prompt + chosen
    assert [e["metrics"]["num_tokens"] for e in steps] == sorted(e["metrics"]["num_tokens"] for e in steps)
    assert all(0 <= e["metrics"]["mean_token_accuracy"] <= 1 and e["metrics"]["entropy"] > 0 for e in steps)
    # Learning rate 5e-3 on 48 answers: the NLL falls.
    assert steps[-1]["metrics"]["loss"] < steps[0]["metrics"]["loss"]
    assert result.last["model_path"] == str(Path(config["output_dir"]).resolve() / "final" / "model")


def one_batch(tiny_model_dir, demo_shards):
    loaded = load_base_model(str(tiny_model_dir), torch.float32, torch.device("cpu"))
    rows = load_shards([str(p) for p in demo_shards[0]]).rows([0, 1, 2, 3])
    return loaded, collate(rows, loaded.spec.pad_token_id, PixelCache(loaded.image_processor), chosen_only=True)


def test_loss_scores_the_assistant_tokens_only(tiny_model_dir, demo_shards):
    """Our per-token NLL is transformers' own causal-LM loss with the prompt labelled -100 (TRL's
    completion-only labels), and its gradient never reaches a prompt position's logits: whatever
    label a prompt token had, the loss would be the same."""
    loaded, batch = one_batch(tiny_model_dir, demo_shards)
    model = loaded.model.eval()
    assert batch.input_ids.shape[0] == 4  # chosen rows only
    captured: dict[str, torch.Tensor] = {}

    def keep_logits(_module, _inputs, output):
        output.retain_grad()
        captured["logits"] = output

    handle = model.get_output_embeddings().register_forward_hook(keep_logits)
    stats = completion_token_stats(model, batch)
    handle.remove()
    loss = -stats.log_probs.sum() / stats.mask.sum()
    loss.backward()
    grad = captured["logits"].grad  # [B, T, V]; position t predicts token t+1
    predicts_prompt = batch.completion_mask[:, 1:] == 0
    assert float(grad[:, :-1][predicts_prompt].abs().max()) == 0.0
    assert float(grad[:, :-1][~predicts_prompt].abs().max()) > 0.0
    labels = batch.input_ids.masked_fill(batch.completion_mask == 0, -100)
    with torch.no_grad():
        theirs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       pixel_values=batch.pixel_values, labels=labels).loss
    assert loss.item() == pytest.approx(theirs.item(), abs=1e-6)


def test_rejected_answers_are_never_read(sft_run, train_config, demo_shards, tmp_path):
    """Every rejected answer replaced: the same adapter, byte for byte."""
    config, result = sft_run
    shards = []
    for i, path in enumerate(demo_shards[0]):
        table = pq.read_table(path)
        column = table.schema.get_field_index("rejected_input_ids")
        flipped = [[3, 4, 5] for _ in range(table.num_rows)]
        field = table.schema.field(column)
        table = table.set_column(column, field, pa.array(flipped, type=field.type))
        shards.append(tmp_path / f"shard-{i}.parquet")
        pq.write_table(table, shards[-1])
    other = run_train(train_config(tmp_path / "out", objective="sft", train_shards=[str(p) for p in shards]))
    assert other.exit_code == 0, other.last
    assert sha256_file(Path(other.last["adapter_path"]) / "adapter_model.safetensors") == sha256_file(
        Path(result.last["adapter_path"]) / "adapter_model.safetensors"
    )


def test_crash_then_resume_gives_the_same_adapter_bytes(sft_run, train_config, tmp_path):
    config, reference = sft_run
    crashed = run_train(train_config(tmp_path, objective="sft", merge_model=True), env={"DPO_FAULT_CRASH_AT_STEP": "4"})
    assert crashed.exit_code == 1 and crashed.last["error_type"] == "Crash"
    resumed = run_train(train_config(tmp_path, objective="sft", merge_model=True,
                                     resume_from=str(tmp_path / "checkpoints" / "step-00000002")))
    assert resumed.exit_code == 0, resumed.last
    assert [e["step"] for e in resumed.of("step")] == [3, 4, 5, 6]
    assert [e["metrics"] for e in resumed.of("step")] == [e["metrics"] for e in reference.of("step")[2:]]
    for name in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        ours = Path(resumed.last["adapter_path"]).parent / name
        theirs = Path(reference.last["adapter_path"]).parent / name
        assert sha256_file(ours) == sha256_file(theirs), name


def test_oom_backoff_keeps_the_update(sft_run, train_config, tmp_path):
    """8 micro-batches of one answer instead of 2 of 4: each micro-batch's NLL is divided by the
    step's token count, so the update is the same up to float32 summation order (the bound of
    conftest, derived for twice the sequences a step here has)."""
    config, reference = sft_run
    result = run_train(train_config(tmp_path, objective="sft"), env={"DPO_FAULT_OOM_ABOVE_MICRO_BATCH": "1"})
    assert result.exit_code == 0, result.last
    assert [(e["micro_batch"], e["grad_accum"]) for e in result.of("oom_backoff")] == [(2, 4), (1, 8)]
    for ours, theirs in zip(result.of("step"), reference.of("step")):
        assert ours["metrics"]["loss"] == pytest.approx(theirs["metrics"]["loss"], rel=1e-5)
        assert ours["metrics"]["num_tokens"] == theirs["metrics"]["num_tokens"]
    distance = adapter_distance(adapter_tensors(result.last["adapter_path"]), adapter_tensors(reference.last["adapter_path"]))
    assert distance < adapter_distance_bound(config, reference)


def test_merged_model_is_the_base_plus_the_adapter(sft_run, tiny_model_dir, demo_shards):
    from peft import PeftModel

    config, result = sft_run
    merged_dir = Path(result.last["model_path"])
    base_files = {p.name for p in Path(tiny_model_dir).iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors"} <= {p.name for p in merged_dir.iterdir()}
    # The processor and tokenizer files come along, so the folder loads like a base model.
    assert {n for n in base_files if "token" in n or "processor" in n or "chat_template" in n} <= {p.name for p in merged_dir.iterdir()}
    manifest = json.loads((merged_dir.parent / "manifest.json").read_text())
    assert "model/model.safetensors" in {e["path"] for e in manifest["files"]}
    merged, batch = one_batch(merged_dir, demo_shards)
    base, _ = one_batch(tiny_model_dir, demo_shards)
    tuned = PeftModel.from_pretrained(base.model, result.last["adapter_path"]).eval()
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "pixel_values": batch.pixel_values}
    with torch.no_grad():
        expected = tuned(**inputs).logits
        got = merged.model.eval()(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-4)
    with torch.no_grad(), tuned.disable_adapter():
        assert not torch.allclose(tuned(**inputs).logits, expected, atol=1e-3)  # the adapter matters


@pytest.mark.parametrize("field, value", [("beta", 0.5), ("loss_type", "ipo"), ("use_weighting", True), ("ld_alpha", 0.5)])
def test_dpo_settings_are_refused_by_name(train_config, tmp_path, field, value):
    result = run_train(train_config(tmp_path, objective="sft", **{field: value}))
    assert result.exit_code == 65 and result.last["error_type"] == "InvalidInput"
    assert f"{field}: a DPO setting" in result.last["message"]


def test_a_dpo_checkpoint_does_not_resume_as_sft(reference_run, train_config, tmp_path):
    reference_config, _ = reference_run
    checkpoint = Path(reference_config["output_dir"]) / "checkpoints" / "step-00000002"
    result = run_train(train_config(tmp_path, objective="sft", resume_from=str(checkpoint)))
    assert result.exit_code == 65 and "objective" in result.last["message"]

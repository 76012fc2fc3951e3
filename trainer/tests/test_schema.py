"""schemas/trainer-events.schema.json: well-formed, and strict enough to catch drift."""

from __future__ import annotations

import json

import pytest

from conftest import SCHEMA_PATH

METRICS = {k: 0.5 for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                            "logps/chosen", "logps/rejected", "learning_rate", "grad_norm")}
STEP = {"event": "step", "time": 1.0, "step": 1, "epoch": 0.1, "metrics": METRICS,
        "samples_per_second": 1.0, "tokens_per_second": 1.0, "peak_memory_bytes": 1}


def test_schema_has_no_duplicate_keys():
    def refuse_duplicates(pairs):
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
        return dict(pairs)

    json.loads(SCHEMA_PATH.read_text(), object_pairs_hook=refuse_duplicates)


def test_valid_step_event(event_validator):
    event_validator.validate(STEP)
    event_validator.validate({**STEP, "metrics": {**METRICS, "loss": None}})  # diverged -> null


@pytest.mark.parametrize(
    "event",
    [
        {**STEP, "event": "progress"},
        {**STEP, "extra": 1},
        {**STEP, "metrics": {k: v for k, v in METRICS.items() if k != "rewards/margins"}},
        {"event": "error", "time": 1.0, "error_type": "Oops", "message": "x"},
        {"event": "checkpoint_saved", "time": 1.0, "step": 2, "path": "relative/dir", "files": ["a"],
         "manifest": "manifest.json"},
        {"event": "finished", "time": 1.0, "step": 2, "adapter_path": "/a"},
    ],
)
def test_invalid_events_are_rejected(event_validator, event):
    assert not event_validator.is_valid(event)


SFT_METRICS = {"loss": 1.5, "mean_token_accuracy": 0.25, "entropy": 2.0, "num_tokens": 120, "learning_rate": 1e-4, "grad_norm": 0.5}


def test_step_metrics_are_dpo_or_sft_never_a_mix(event_validator):
    event_validator.validate({**STEP, "metrics": SFT_METRICS})
    event_validator.validate({"event": "finished", "time": 1.0, "step": 2, "adapter_path": "/a", "model_path": "/m",
                              "metrics": SFT_METRICS})
    for metrics in ({**SFT_METRICS, "rewards/chosen": 0.1}, {**METRICS, "mean_token_accuracy": 0.5},
                    {k: v for k, v in SFT_METRICS.items() if k != "num_tokens"}, {**SFT_METRICS, "num_tokens": 1.5}):
        assert not event_validator.is_valid({**STEP, "metrics": metrics})
    assert not event_validator.is_valid({"event": "finished", "time": 1.0, "step": 2, "adapter_path": "/a",
                                         "model_path": "relative", "metrics": SFT_METRICS})

"""Score held-out preference pairs with the base model or base + adapter (CONTRACT.md).

    python -m dpo_trainer.evaluate --config CONFIG.json

preference_accuracy: share of pairs with log p(chosen) > log p(rejected) under the evaluated model.
reward_*: implicit DPO rewards beta * (log p_policy - log p_ref), the reference being the base
model (adapter disabled); for the base model itself they are all 0.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from .config import EvalConfig
from .data import PixelCache, collate
from .cli import config_command
from .errors import ExitCode, ModelLoadError
from .events import emit
from .modeling import autocast, completion_logps, load_for_scoring


def load_adapter(model: Any, adapter_dir: str) -> Any:
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter_dir {adapter_dir} has no adapter_config.json; expected a PEFT adapter folder")
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the adapter in {adapter_dir}: {type(exc).__name__}: {exc}") from None


@torch.no_grad()
def evaluate(config: EvalConfig) -> dict[str, float | int]:
    dataset, loaded, device, dtype = load_for_scoring(config.model_dir, config.shards, config.device, config.dtype)
    model = loaded.model
    if config.adapter_dir:
        model = load_adapter(model, config.adapter_dir)
    model.eval()
    pixels = PixelCache(loaded.image_processor, loaded.spec.image_token_id) if loaded.image_processor else None

    pairs = preferred = reward_correct = 0
    reward_margin_sum = logp_margin_sum = 0.0
    for start in range(0, len(dataset), config.batch_size):
        rows = dataset.rows(range(start, min(start + config.batch_size, len(dataset))))
        batch = collate(rows, loaded.spec.pad_token_id, pixels).to(device)
        b = batch.pairs
        with autocast(device, dtype):
            policy, _ = completion_logps(model, batch)
            if config.adapter_dir:
                with model.disable_adapter():
                    reference, _ = completion_logps(model, batch)
            else:
                reference = policy
        chosen_reward = config.beta * (policy[:b] - reference[:b])
        rejected_reward = config.beta * (policy[b:] - reference[b:])
        pairs += b
        preferred += int((policy[:b] > policy[b:]).sum())
        reward_correct += int((chosen_reward > rejected_reward).sum())
        reward_margin_sum += float((chosen_reward - rejected_reward).sum())
        logp_margin_sum += float((policy[:b] - policy[b:]).sum())
    return {
        "samples": pairs,
        "preference_accuracy": preferred / pairs,
        "reward_accuracy": reward_correct / pairs,
        "reward_margin_mean": reward_margin_sum / pairs,
        "logp_margin_mean": logp_margin_sum / pairs,
    }


def main(argv: list[str] | None = None) -> int:
    return config_command(argv, "score preference pairs", EvalConfig, run_evaluation)


def run_evaluation(config: EvalConfig) -> int:
    emit("eval_result", metrics=evaluate(config))
    return ExitCode.FINISHED


if __name__ == "__main__":
    sys.exit(main())

"""dpo_trainer.score_prompts on the tiny LLaVA: the next-token log-probs are the trainer's own
completion log-probs (as the evaluator scores pairs), and the greedy answers are transformers'
greedy decoding. (That they equal the ONNX engine's yes/no answers and generations is checked end
to end by test/integration/pipeline.test.ts, which runs both engines on one model.)"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow.parquet as pq
import torch

from dpo_trainer.config import PromptScoreConfig, parse_config
from dpo_trainer.data import PixelCache, collate
from dpo_trainer.modeling import completion_logps, load_base_model
from dpo_trainer.score_prompts import run_scoring


def _rows(shard: Path, n: int) -> list[dict]:
    return pq.read_table(shard).slice(0, n).to_pylist()


def test_answers_match_the_trainers_scoring_and_greedy_decoding(tiny_model_dir, demo_shards, tmp_path):
    rows = _rows(demo_shards[1][0], 3)
    loaded = load_base_model(str(tiny_model_dir), torch.float32, torch.device("cpu"))
    model = loaded.model.eval()
    eos = int(model.generation_config.eos_token_id or loaded.spec.pad_token_id)
    candidates = [rows[0]["chosen_input_ids"][0], rows[0]["rejected_input_ids"][0], 5]
    requests = {
        "eos_token_id": eos,
        "items": [
            {
                "id": r["sample_id"],
                "prompt_input_ids": r["prompt_input_ids"],
                "image": base64.b64encode(r["image"]).decode(),
                "next_tokens": candidates,
                "max_new_tokens": 6,
            }
            for r in rows
        ],
    }
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    config = {
        "model_dir": str(tiny_model_dir),
        "requests": str(tmp_path / "requests.json"),
        "output": str(tmp_path / "answers.json"),
        "device": "cpu",
    }
    # In-process, as conftest's run_train: main() would take over this process's stdout.
    assert run_scoring(parse_config(PromptScoreConfig, config)) == 0
    answers = json.loads((tmp_path / "answers.json").read_text())["items"]
    assert [a["id"] for a in answers] == [r["sample_id"] for r in rows]

    pixels = PixelCache(loaded.image_processor, loaded.spec.image_token_id)
    with torch.no_grad():
        for row, answer in zip(rows, answers):
            # log p(token | prompt) as the evaluator's one-token completion scores it.
            for token, logp in zip(candidates, answer["next_logprobs"]):
                one = {**row, "chosen_input_ids": [token], "rejected_input_ids": [token]}
                expected, _ = completion_logps(model, collate([one], loaded.spec.pad_token_id, pixels))
                assert abs(float(expected[0]) - logp) < 1e-4
            batch = collate([{**row, "chosen_input_ids": []}], loaded.spec.pad_token_id, pixels, chosen_only=True)
            out = model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                pixel_values=batch.pixel_values,
                max_new_tokens=6,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=loaded.spec.pad_token_id,
            )[0, batch.input_ids.shape[1] :].tolist()
            assert answer["generated"] == (out[: out.index(eos)] if eos in out else out)

"""Precomputed reference log-probs vs the per-step reference forward pass, in one run.

    cd trainer && OMP_NUM_THREADS=1 .venv/bin/python ../bench/trainer_reference.py [--pairs 256 --steps 8]

Same tiny model (dpo_trainer.build_tiny_model), same demo pairs, same seed and micro-batch: trains
once with the reference forward pass each micro-batch (the anchor) and once with
`precompute_ref_log_probs` (after `python -m dpo_trainer.reference` over the same shards), and
prints training samples/s of each, their ratio, the one-off reference pass and the final losses
(which must agree). In-process, so the ~20 s of imports are paid once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[1] / "trainer"
sys.path.insert(0, str(TRAINER / "tests"))

from demo_data import write_demo_shards  # noqa: E402

from dpo_trainer.build_tiny_model import write_tiny_llava  # noqa: E402
from dpo_trainer.cli import run_command  # noqa: E402
from dpo_trainer.config import ReferenceConfig, TrainConfig, parse_config  # noqa: E402
from dpo_trainer.preemption import PreemptionFlag  # noqa: E402
from dpo_trainer.reference import run_reference  # noqa: E402
from dpo_trainer.train import train  # noqa: E402


def events_of(body) -> tuple[int, list[dict]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(body)
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-reference-"))
    model = write_tiny_llava(work / "model", seed=0)
    shards, _ = write_demo_shards(model, work / "shards", args.pairs, 8, seed=1, shard_size=args.pairs)
    base = {
        "model_dir": str(model), "train_shards": [str(p) for p in shards], "seed": 3,
        "max_steps": args.steps, "per_device_train_batch_size": args.micro_batch,
        "gradient_accumulation_steps": 2, "checkpoint_every_steps": 10_000, "learning_rate": 0.002,
        "dtype": "float32",
    }

    def run_train(name: str, **extra) -> list[dict]:
        config = parse_config(TrainConfig, {**base, "output_dir": str(work / name), **extra})
        code, events = events_of(lambda: train(config, PreemptionFlag()))
        assert code == 0, events[-1]
        return [e for e in events if e["event"] == "step"]

    anchor = run_train("anchor")
    started = time.perf_counter()
    code, ref_events = events_of(lambda: run_reference(parse_config(ReferenceConfig, {
        "model_dir": str(model), "shards": [str(p) for p in shards], "output_dir": str(work / "ref"), "batch_size": 32,
    })))
    assert code == 0, ref_events[-1]
    reference_seconds = time.perf_counter() - started
    pre = run_train("precomputed", precompute_ref_log_probs=True, ref_log_probs_files=[str(work / "ref" / "ref_logps.parquet")])

    def rate(steps: list[dict]) -> float:
        # Step 1 includes warm-up (first kernels, pixel cache fill); average the rest.
        rest = steps[1:] or steps
        return sum(s["samples_per_second"] for s in rest) / len(rest)

    a, p = rate(anchor), rate(pre)
    print(f"tiny LLaVA, {args.pairs} pairs, {args.steps} steps of {2 * args.micro_batch} pairs (micro-batch {args.micro_batch}), fp32 CPU")
    print(f"per-step reference forward (anchor): {a:8.1f} pairs/s")
    print(f"precomputed reference:               {p:8.1f} pairs/s   ratio {p / a:.2f}x")
    print(f"one-off reference pass over {args.pairs} pairs: {reference_seconds:.1f} s (model load included)")
    print(f"final loss: anchor {anchor[-1]['metrics']['loss']:.6f}, precomputed {pre[-1]['metrics']['loss']:.6f}")
    print(f"peak RSS (process, cumulative): {pre[-1]['peak_memory_bytes'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

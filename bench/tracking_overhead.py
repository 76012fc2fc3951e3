"""Step-time overhead of experiment tracking (train.report_to) at the demo's train settings.

    OMP_NUM_THREADS=1 trainer/.venv/bin/python bench/tracking_overhead.py [--pairs 160 --repeats 2]

The demo's recipe (configs/demo.yaml: micro-batch 16, no accumulation, LoRA r 16 / alpha 32 on
all linear layers, fp32, cosine with 5% warmup) on the demo's tiny LLaVA and generated pairs
(trainer/tests/demo_data.py), trained in-process twice per repeat, alternating: report_to [] and
report_to [tensorboard]. Two figures:

- the trainer's own count of seconds spent in tracker calls (`tracking.seconds` of the `finished`
  event) over the run's summed step time: the direct cost, free of run-to-run noise;
- the median step time with and without tracking (steps 2..N, from the `step` events' times):
  the end-to-end check, whose difference is within the noise at this size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

TRAINER = Path(__file__).resolve().parent.parent / "trainer"
sys.path.insert(0, str(TRAINER / "tests"))

from demo_data import write_demo_shards  # noqa: E402

from dpo_trainer.build_tiny_model import write_tiny_llava  # noqa: E402
from dpo_trainer.cli import run_command  # noqa: E402
from dpo_trainer.config import TrainConfig, parse_config  # noqa: E402
from dpo_trainer.preemption import PreemptionFlag  # noqa: E402
from dpo_trainer.train import train  # noqa: E402


def run(config: dict) -> list[dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(lambda: train(parse_config(TrainConfig, config), PreemptionFlag()))
    assert code == 0, out.getvalue()[-2000:]
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tracking-bench-"))
    model = write_tiny_llava(work / "model", seed=0)
    shards, _ = write_demo_shards(model, work / "shards", args.pairs, 16, seed=1, shard_size=args.pairs)
    base = {
        "model_dir": str(model), "train_shards": [str(p) for p in shards], "seed": 42, "epochs": 1,
        "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "learning_rate": 0.001,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "beta": 0.1,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "dtype": "float32", "checkpoint_every_steps": 100,
    }
    steps: dict[str, list[float]] = {"none": [], "tensorboard": []}
    direct: list[float] = []
    for repeat in range(args.repeats):
        for report_to in ([], ["tensorboard"]):
            name = report_to[0] if report_to else "none"
            events = run({**base, "output_dir": str(work / f"out-{name}-{repeat}"), "report_to": report_to})
            times = [e["time"] for e in events if e["event"] == "step"]
            durations = [b - a for a, b in zip(times, times[1:])]
            steps[name] += durations
            if report_to:
                finished = events[-1]
                direct.append(finished["tracking"]["seconds"] / (statistics.mean(durations) * len(times)))
    result = {
        "steps_per_run": len(steps["none"]) // args.repeats + 1,
        "median_step_s": {k: round(statistics.median(v), 4) for k, v in steps.items()},
        "tracker_seconds_share_of_step_time": [f"{100 * d:.3f}%" for d in direct],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

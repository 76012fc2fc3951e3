"""Does the demo learn? Builds the tiny LLaVA, renders the demo task, trains DPO + LoRA with the
real CLI (subprocess, so the wall time includes start-up) and compares held-out preference
accuracy of the base model and base + adapter. Not part of pytest (minutes, not seconds).

    cd trainer && .venv/bin/python scripts/demo_learnability.py [--seeds 0 1 2] [--lr 3e-3] ...

Prints one JSON line per seed and a summary; the numbers go into configs/demo.yaml.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRAINER / "tests"))

from demo_data import write_demo_shards  # noqa: E402

from dpo_trainer.build_tiny_model import TinyLlavaSize, write_tiny_llava  # noqa: E402
from dpo_trainer.config import EvalConfig  # noqa: E402
from dpo_trainer.evaluate import evaluate  # noqa: E402


def per_kind_accuracy(model_dir: Path, adapter: str | None, shard: Path) -> dict[str, float]:
    """Preference accuracy split by question kind (colour / count / position), for diagnosis."""
    from dpo_trainer.data import PixelCache, collate, load_shards
    from dpo_trainer.evaluate import load_adapter
    from dpo_trainer.modeling import completion_logps, load_base_model, resolve_device

    import torch

    dataset = load_shards([str(shard)])
    loaded = load_base_model(str(model_dir), torch.float32, resolve_device("cpu"))
    model = load_adapter(loaded.model, adapter) if adapter else loaded.model
    model.eval()
    pixels = PixelCache(loaded.image_processor)
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    with torch.no_grad():
        for start in range(0, len(dataset), 64):
            rows = dataset.rows(range(start, min(start + 64, len(dataset))))
            batch = collate(rows, loaded.spec.pad_token_id, pixels)
            logps, _ = completion_logps(model, batch)
            b = batch.pairs
            for row, c, r in zip(rows, logps[:b].tolist(), logps[b:].tolist()):
                kind = kind_of(row["sample_id"])
                total[kind] += 1
                right[kind] += int(c > r)
    return {k: round(right[k] / total[k], 3) for k in sorted(total)}


KINDS: dict[str, str] = {}


def kind_of(sample_id: str) -> str:
    return KINDS.get(sample_id, "?")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-pairs", type=int, default=2000)
    parser.add_argument("--eval-pairs", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--scheduler", default="cosine")
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--text-hidden", type=int, default=TinyLlavaSize.text_hidden)
    parser.add_argument("--text-layers", type=int, default=TinyLlavaSize.text_layers)
    parser.add_argument("--text-heads", type=int, default=TinyLlavaSize.text_heads)
    parser.add_argument("--vision-hidden", type=int, default=TinyLlavaSize.vision_hidden)
    parser.add_argument("--vision-layers", type=int, default=TinyLlavaSize.vision_layers)
    parser.add_argument("--image-size", type=int, default=TinyLlavaSize.image_size)
    parser.add_argument("--patch-size", type=int, default=TinyLlavaSize.patch_size)
    parser.add_argument("--init", type=float, default=TinyLlavaSize.initializer_range)
    parser.add_argument("--per-kind", action="store_true", help="also report accuracy per question kind")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import demo_data

    results = []
    for seed in args.seeds:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="dpo-demo-"))
        work = work / f"seed-{seed}"
        size = TinyLlavaSize(
            text_hidden=args.text_hidden,
            text_layers=args.text_layers,
            text_heads=args.text_heads,
            vision_hidden=args.vision_hidden,
            vision_layers=args.vision_layers,
            image_size=args.image_size,
            patch_size=args.patch_size,
            initializer_range=args.init,
        )
        model_dir = write_tiny_llava(work / "model", seed=seed, size=size)
        train_shards, eval_shards = write_demo_shards(
            model_dir, work / "shards", args.train_pairs, args.eval_pairs, seed=seed
        )
        for pair in demo_data.generate_pairs(args.eval_pairs, seed + 10_000, "eval"):
            KINDS[pair.sample_id] = pair.kind
        config = {
            "model_dir": str(model_dir),
            "train_shards": [str(p) for p in train_shards],
            "output_dir": str(work / "out"),
            "seed": seed,
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.batch,
            "gradient_accumulation_steps": args.accum,
            "learning_rate": args.lr,
            "lr_scheduler_type": args.scheduler,
            "warmup_ratio": args.warmup,
            "beta": args.beta,
            "lora": {"r": args.rank, "alpha": args.alpha, "dropout": args.lora_dropout, "target_modules": "all-linear"},
            "checkpoint_every_steps": 1000,
            "log_every_steps": 25,
            "dtype": "float32",
        }
        config_path = work / "train.json"
        config_path.write_text(json.dumps(config, indent=2))
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "dpo_trainer.train", "--config", str(config_path)],
            cwd=TRAINER, capture_output=True, text=True,
        )
        train_wall = time.perf_counter() - started
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"train exited {proc.returncode}: {events[-1] if events else ''}")
        steps = [e for e in events if e["event"] == "step"]
        first_step_time = next(e["time"] for e in events if e["event"] == "started")
        loop_seconds = events[-1]["time"] - first_step_time
        finished = events[-1]
        base = evaluate(EvalConfig(model_dir=str(model_dir), shards=[str(p) for p in eval_shards], beta=args.beta))
        tuned = evaluate(
            EvalConfig(model_dir=str(model_dir), shards=[str(p) for p in eval_shards], beta=args.beta,
                       adapter_dir=finished["adapter_path"])
        )
        result = {
            "seed": seed,
            "base_accuracy": round(base["preference_accuracy"], 4),
            "trained_accuracy": round(tuned["preference_accuracy"], 4),
            "gain_points": round(100 * (tuned["preference_accuracy"] - base["preference_accuracy"]), 1),
            "reward_accuracy": round(tuned["reward_accuracy"], 4),
            "train_wall_seconds": round(train_wall, 1),
            "loop_seconds": round(loop_seconds, 1),
            "steps": finished["step"],
            "steps_per_second": round(finished["step"] / loop_seconds, 2),
            "final_train_loss": round(steps[-1]["metrics"]["loss"], 4),
        }
        if args.per_kind:
            result["per_kind_base"] = per_kind_accuracy(model_dir, None, eval_shards[0])
            result["per_kind_trained"] = per_kind_accuracy(model_dir, finished["adapter_path"], eval_shards[0])
        print(json.dumps(result), flush=True)
        results.append(result)
    gains = [r["gain_points"] for r in results]
    print(json.dumps({"settings": vars(args) | {"workdir": str(args.workdir)}, "min_gain_points": min(gains),
                      "mean_gain_points": round(sum(gains) / len(gains), 1)}, default=str))


if __name__ == "__main__":
    main()

"""Our DPO trainer (padded and padding-free) vs TRL's DPOTrainer on CPU: training pairs/s and peak
RSS, in one run.

    OMP_NUM_THREADS=1 trainer/.venv/bin/python bench/trainer_vs_trl.py [--pairs 256 --steps 20 --repeats 3]

Same tiny random-init LLaVA (dpo_trainer.build_tiny_model, seed 0), same generated demo pairs
(trainer/tests/demo_data.py: our trainer reads them as token shards, TRL as conversational
prompt/chosen/rejected rows with the same 48 px JPEG thumbnail as `images`, through the model's own
processor), same micro-batch, gradient accumulation, LoRA (r 16, alpha 32, dropout 0, all linear
layers except the LM head), optimizer steps, learning rate (constant, no warmup), fp32, seed, no
gradient checkpointing, no checkpoints written during the timed steps. Each trainer runs in its own
child process, one after the other (ours as the worker runs it: `python -m dpo_trainer.train`), so
that peak RSS is per process (os.wait4's ru_maxrss of that child). Ours runs twice per repeat:
padded micro-batches, and `padding_free: true` (each micro-batch packed into one sequence, each
pair as [prompt, chosen, rejected] with its prompt and image encoded once for both answers; TRL
1.16 forces padding-free off for DPO, so its side is padded). tokens/s counts every side's rows as
the padded batch holds them (a pair's prompt twice), so it moves with pairs/s.

What is timed: the steady-state training loop -- wall time from the end of optimizer step 1 to the
end of the last step, divided into the pairs of steps 2..N. Step 1 (first kernels, caches) and
everything before it (imports, model load, dataset preparation) are excluded on both sides. Ours:
the `time` field of the `step` events (emitted right after each optimizer step); TRL: a
TrainerCallback's on_step_end timestamps. Both include data collation and image processing inside
the loop, the policy and the reference (adapters disabled) forward passes, backward, clipping and
AdamW. Peak RSS is the whole child process (imports and model load included), the same for both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TRAINER = BENCH.parent / "trainer"
sys.path.insert(0, str(TRAINER / "tests"))
sys.path.insert(0, str(BENCH))

from trl_runner import run_child, steady_rate, write_pairs_file  # noqa: E402

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def pairs_per_step(args) -> int:
    return args.micro_batch * args.grad_accum


def run_ours(work: Path, model: Path, shards: list[Path], args, *, padding_free: bool = False) -> dict:
    name = "ours-packed" if padding_free else "ours"
    config = {
        "model_dir": str(model), "train_shards": [str(p) for p in shards], "output_dir": str(work / "ours"),
        "seed": args.seed, "max_steps": args.steps, "per_device_train_batch_size": args.micro_batch,
        "gradient_accumulation_steps": args.grad_accum, "learning_rate": args.learning_rate,
        "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "beta": 0.1, "loss_type": "sigmoid",
        "max_grad_norm": 1.0, "lora": LORA, "dtype": "float32", "device": "cpu",
        "gradient_checkpointing": False, "checkpoint_every_steps": 1_000_000, "padding_free": padding_free,
    }
    config["output_dir"] = str(work / name)
    path = work / f"{name}.json"
    path.write_text(json.dumps(config))
    code, rss, stdout = run_child(
        [sys.executable, "-m", "dpo_trainer.train", "--config", str(path)], TRAINER, work / f"{name}.stderr"
    )
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    if code != 0:
        raise SystemExit(f"our trainer exited {code}: {events[-1] if events else ''} (see {work / f'{name}.stderr'})")
    steps = [e for e in events if e["event"] == "step"]
    from safetensors import safe_open

    with safe_open(str(work / name / "final" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        trainable = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    return {
        "trainable_params": trainable,
        "end_times": [e["time"] for e in steps], "losses": [e["metrics"]["loss"] for e in steps],
        # non-padding tokens (image tokens included) of each step, as TRL's num_tokens counts them
        "step_tokens": [e["tokens_per_second"] / e["samples_per_second"] * pairs_per_step(args) for e in steps],
        "peak_rss_mib": rss,
    }


def run_trl(work: Path, model: Path, args) -> dict:
    from demo_data import generate_pairs

    pairs = generate_pairs(args.pairs, args.data_seed, "train")  # what write_demo_shards tokenized
    pairs_file = write_pairs_file(work / "trl-pairs.parquet", [
        {"question": p.question, "chosen": p.chosen, "rejected": p.rejected, "image": p.image_jpeg} for p in pairs
    ])
    spec = {
        "model_dir": str(model), "pairs_file": str(pairs_file), "output_dir": str(work / "trl"),
        "result": str(work / "trl-result.json"), "seed": args.seed, "steps": args.steps,
        "micro_batch": args.micro_batch, "grad_accum": args.grad_accum, "learning_rate": args.learning_rate,
        "lr_scheduler_type": "constant", "dtype": "float32", "gradient_checkpointing": False, "device": "cpu",
        "lora": LORA,
    }
    path = work / "trl-spec.json"
    path.write_text(json.dumps(spec))
    code, rss, _ = run_child([sys.executable, str(BENCH / "trl_runner.py"), str(path)], TRAINER, work / "trl.stderr")
    if code != 0:
        tail = (work / "trl.stderr").read_text()[-3000:]
        raise SystemExit(f"TRL child exited {code}:\n{tail}")
    result = json.loads((work / "trl-result.json").read_text())
    result["peak_rss_mib"] = rss
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of ours, ours padding-free and TRL, rotating which runs first")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from demo_data import write_demo_shards

    from dpo_trainer.build_tiny_model import write_tiny_llava

    work = Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))
    model = write_tiny_llava(work / "model", seed=0)
    shards, _ = write_demo_shards(model, work / "shards", args.pairs, 8, seed=args.data_seed, shard_size=args.pairs)
    per_step = pairs_per_step(args)
    load_before = os.getloadavg()
    runs: list[dict] = []
    for r in range(args.repeats):
        # Rotate the order (ours, packed, TRL; then packed, TRL, ours; ...) so drift in the
        # machine's load does not always favour the same side.
        sides = {
            "ours": lambda: run_ours(work, model, shards, args),
            "packed": lambda: run_ours(work, model, shards, args, padding_free=True),
            "trl": lambda: run_trl(work, model, args),
        }
        order = list(sides)[r % 3:] + list(sides)[: r % 3]
        results = {name: sides[name]() for name in order}
        run = {}
        for name, result in results.items():
            span = result["end_times"][-1] - result["end_times"][0]
            tokens = (sum(result["step_tokens"][1:]) if name != "trl" else result["num_tokens"][-1] - result["num_tokens"][0])
            run[name] = {"pairs_per_second": steady_rate(result["end_times"], per_step), "tokens_per_second": tokens / span, **result}
        run["order"] = order
        runs.append(run)
    load_after = os.getloadavg()
    threads = os.environ.get("OMP_NUM_THREADS", "(unset)")
    print(f"tiny LLaVA, {args.pairs} pairs, {args.steps} steps of {per_step} pairs "
          f"(micro-batch {args.micro_batch} x accumulation {args.grad_accum}), fp32 CPU, OMP_NUM_THREADS={threads}, "
          f"{args.repeats} repeat(s) in rotating order")
    print(f"machine: {os.cpu_count()} cores, load average (1/5/15 min) {' '.join(f'{v:.2f}' for v in load_before)} before,"
          f" {' '.join(f'{v:.2f}' for v in load_after)} after")
    print("timed: steps 2..N of the training loop (model load, data preparation and step 1 excluded)")
    print(f"{'':18}{'ours':>10}{'packed':>10}{'TRL 1.16':>10}{'ours/TRL':>10}{'packed/TRL':>12}{'packed/ours':>13}")
    keys = (("pairs_per_second", "pairs/s", ".1f"), ("tokens_per_second", "tokens/s", ".0f"), ("peak_rss_mib", "peak RSS MiB", ".0f"))
    ratios: dict[str, dict[str, list[float]]] = {side: {k: [] for k, _, _ in keys} for side in ("ours", "packed", "packed_vs_ours")}
    for i, run in enumerate(runs, 1):
        o, p, t = run["ours"], run["packed"], run["trl"]
        for key, label, fmt in keys:
            ratios["ours"][key].append(o[key] / t[key])
            ratios["packed"][key].append(p[key] / t[key])
            ratios["packed_vs_ours"][key].append(p[key] / o[key])
            print(f"{f'#{i} {label}':18}{o[key]:10{fmt}}{p[key]:10{fmt}}{t[key]:10{fmt}}"
                  f"{o[key] / t[key]:9.2f}x{p[key] / t[key]:11.2f}x{p[key] / o[key]:12.2f}x")
    median = {side: {k: statistics.median(v) for k, v in r.items()} for side, r in ratios.items()}
    for side, label in (("ours", "ours/TRL"), ("packed", "packed/TRL"), ("packed_vs_ours", "packed/ours")):
        print(f"median ratio {label}: " + ", ".join(f"{k} {v:.2f}x" for k, v in median[side].items()))
    o, p, t = runs[-1]["ours"], runs[-1]["packed"], runs[-1]["trl"]
    print(f"tokens per pair: ours {o['tokens_per_second'] / o['pairs_per_second']:.1f}, "
          f"TRL {t['tokens_per_second'] / t['pairs_per_second']:.1f} (same text; ours tokenized per CONTRACT.md "
          "with <s> and </s>, TRL by its own chat-template split, which adds neither)")
    print(f"first/last step loss: ours {o['losses'][0]:.4f}/{o['losses'][-1]:.4f}, packed {p['losses'][0]:.4f}/{p['losses'][-1]:.4f}, "
          f"TRL {t['losses'][0]:.4f}/{t['losses'][-1]:.4f} (ours and packed: same data order; TRL's differs)")
    print(f"largest per-step loss difference packed vs ours: {max(abs(a - b) for a, b in zip(o['losses'], p['losses'])):.2e}")
    print(f"LoRA parameters: ours {o['trainable_params']:,}, packed {p['trainable_params']:,}, TRL {t['trainable_params']:,}")
    met = median["ours"]["pairs_per_second"] >= 1.0 and median["ours"]["peak_rss_mib"] <= 1.0
    print(f"goal, padded (>= 1.0x TRL throughput at <= 1.0x peak RSS, medians): {'met' if met else 'NOT met'}")
    met = median["packed"]["pairs_per_second"] >= 1.5 and median["packed"]["peak_rss_mib"] <= 1.0
    print(f"goal, padding-free (>= 1.5x TRL throughput at <= 1.0x peak RSS, medians): {'met' if met else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "pairs_per_step": per_step, "steps": args.steps, "omp_num_threads": threads,
            "load_average_before": load_before, "load_average_after": load_after,
            "median_ratios": median, "runs": runs,
        }, indent=2))


if __name__ == "__main__":
    main()

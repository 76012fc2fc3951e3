"""Today's VLM families on one GPU at their published sizes: our trainer vs TRL's DPOTrainer, then a
real CUDA out-of-memory and a real SIGTERM through our trainer.

    bash bench/gpu/run.sh                                    # on the GPU machine (no internet)
    OMP_NUM_THREADS=1 trainer/.venv/bin/python bench/gpu/families_dpo.py --smoke   # CPU, toy dims

Per family (--families, default qwen2_5_vl gemma3 qwen3_vl):
1. A random-init model with the exact published config (configs/models/<repo>/config.json:
   Qwen2.5-VL-7B-Instruct 8,292,166,656 parameters, gemma-3-4b-it 4,300,079,472,
   Qwen3-VL-8B-Instruct 8,767,123,696), built on the GPU in bf16 and saved with the family's real
   processor class at the published processor settings around a small locally trained tokenizer
   of the family's kind (dpo_trainer.build_tiny_model); the config's special-token ids are set
   to that tokenizer's ids (no parameter count changes). Random weights: the loss is meaningless,
   the cost per step is the real model's.
2. Image pairs (the demo scenes, 896 x 672 px: 768 image tokens for Qwen2.5-VL, 588 for Qwen3-VL,
   Gemma 3's fixed 256) as token shards for our trainer, tokenized by the processor itself, and as
   conversational rows for TRL.
3. `python -m dpo_trainer.train` and TRL's DPOTrainer (bench/trl_runner.py), each in its own
   process: bf16 + LoRA r 16 / alpha 32 on all linear layers, gradient checkpointing,
   micro-batch 2, lr 5e-6 cosine, seed 42. Peak GPU memory, pairs/s over steps 2..N, and MFU
   (6 x trainable-path FLOPs are not separated: 2 x forward-FLOPs of both models per token, see
   `mfu`), ratios ours / TRL.
   Then ours again with `padding_free: true` where the family supports it (Qwen2.5-VL, Qwen3-VL;
   Gemma 3 is refused by the trainer), as `ours_packed` (--skip-packed leaves it out).
Then, on the first family:
4. A real CUDA OOM: micro-batch 64 without gradient checkpointing, far past 139 GiB; the trainer
   must back off (halving the micro-batch, doubling accumulation, then checkpointing) and finish
   with the same effective batch. Reported: the backoff events and the micro-batch it settled on.
5. A real SIGTERM: a run is sent SIGTERM after its second step; it must exit 75 with an emergency
   checkpoint, and a run resumed from it must finish; reported with the loss of each resumed step
   next to the uninterrupted run's (bitwise equality is not expected on GPU kernels).

Writes families_dpo.json to $OUT (or --out), a section per family as it finishes, so a timeout
still leaves what ran.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
TRAINER = REPO / "trainer"
sys.path.insert(0, str(TRAINER))
sys.path.insert(0, str(TRAINER / "tests"))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trl_runner import steady_rate  # noqa: E402

from dpo_trainer.packing import PACKABLE_FAMILIES  # noqa: E402

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
H200_BF16_DENSE_FLOPS = 989e12  # NVIDIA's H100/H200 SXM dense bf16 peak, the usual MFU denominator
IMAGE_SIZE = (896, 672)  # (width, height): an RLAIF-V-like 4:3 photo within the seed configs' pixel budgets

FAMILIES = {
    "qwen2_5_vl": {"repo": "Qwen2.5-VL-7B-Instruct", "max_pixels": 1003520},
    "gemma3": {"repo": "gemma-3-4b-it", "max_pixels": None},
    "qwen3_vl": {"repo": "Qwen3-VL-8B-Instruct", "max_pixels": 1310720},
}


def scaled_down(raw: dict, family: str) -> dict:
    """The same architecture at toy sizes, for --smoke on CPU."""
    text = raw.setdefault("text_config", {}) if family != "qwen2_5_vl" else raw
    text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    vision = raw["vision_config"]
    if family == "gemma3":
        text.update(head_dim=16, sliding_window=24)
        vision.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=4)
        raw["mm_tokens_per_image"] = 16
    else:
        vision.update(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64)
        head_dim = 16
        sections = [2, 3, 3]  # half of head_dim 16, split t/h/w
        if family == "qwen3_vl":
            text.update(head_dim=head_dim)
            vision.update(num_position_embeddings=64, deepstack_visual_indexes=[0])
            text["rope_scaling"] = {**text.get("rope_scaling", {}), "mrope_section": sections}
        else:
            vision.update(fullatt_block_indexes=[1], window_size=112)
            raw["rope_scaling"] = {**raw.get("rope_scaling", {}), "mrope_section": sections}
    return raw


def build_model_folder(family: str, out: Path, smoke: bool, device: str, dtype) -> tuple[Path, int]:
    """The published config with the local tokenizer's special-token ids, random init on `device`,
    saved with the family's processor at its published settings."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from dpo_trainer import build_tiny_model as tiny

    raw = json.loads((REPO / "configs" / "models" / FAMILIES[family]["repo"] / "config.json").read_text())
    if smoke:
        raw = scaled_down(raw, family)
    if family == "gemma3":
        from transformers import Gemma3Processor
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        tokenizer = tiny.build_gemma3_tokenizer(tiny.demo_corpus(), 600)
        raw.update(boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
                   eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
                   image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"))
        edge = raw["vision_config"]["image_size"]
        image_processor = Gemma3ImageProcessorPil(size={"height": edge, "width": edge}, resample=2, image_mean=[0.5] * 3,
                                                  image_std=[0.5] * 3, do_pan_and_scan=None)
        processor = Gemma3Processor(image_processor, tokenizer, chat_template=tiny.GEMMA3_CHAT_TEMPLATE,
                                    image_seq_length=raw["mm_tokens_per_image"])
        template = tiny.GEMMA3_CHAT_TEMPLATE
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from dpo_trainer.vision_processors import IMAGE_ONLY_FAMILIES, image_only_processor_class

        tokenizer = tiny.build_qwen2_tokenizer(tiny.demo_corpus(), 512)
        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
        raw.update(ids)
        raw.pop("vision_token_id", None)
        patch = raw["vision_config"]["patch_size"]
        budget = FAMILIES[family]["max_pixels"] if not smoke else 64 * 64
        qwen3 = family == "qwen3_vl"
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=(2 * patch) ** 2, max_pixels=budget, patch_size=patch, merge_size=2, temporal_patch_size=2,
            **({"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if qwen3 else {}),
        )
        template = tiny.QWEN3_VL_CHAT_TEMPLATE if qwen3 else tiny.QWEN2_VL_CHAT_TEMPLATE
        processor = image_only_processor_class(IMAGE_ONLY_FAMILIES[family])(image_processor, tokenizer, chat_template=template)
    folder = out / "config"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw))
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):  # random init where the weights will live: seconds, not minutes
        model = AutoModelForImageTextToText.from_config(config)
    torch.set_default_dtype(previous)
    if family == "gemma3":
        with torch.no_grad():  # zero in transformers' init (the checkpoint supplies it)
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.02)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out / "model")
    tiny.save_processor(processor, out / "model", template)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out / "model", params


def make_rows(model_dir: Path, family: str, n: int, size: tuple[int, int]) -> list[dict]:
    """Shard rows tokenized by the family's processor (family_kit's TRL split) and TRL's texts."""
    from demo_data import generate_pairs
    from family_kit import texts
    from PIL import Image

    from dpo_trainer.vision_processors import IMAGE_ONLY_FAMILIES, load_image_only_processor
    from transformers import AutoProcessor

    processor = (load_image_only_processor(model_dir, family) if family in IMAGE_ONLY_FAMILIES
                 else AutoProcessor.from_pretrained(model_dir, local_files_only=True))
    tokenizer = processor.tokenizer
    rows = []
    for pair in generate_pairs(n, 1, "bench"):
        image = Image.open(io.BytesIO(pair.image_jpeg)).convert("RGB").resize(size)
        data = io.BytesIO()
        image.save(data, format="JPEG", quality=90)
        prompt, chosen = texts(processor, pair.question, pair.chosen)
        _, rejected = texts(processor, pair.question, pair.rejected)
        prompt_ids = processor(images=[image], text=prompt, add_special_tokens=family != "gemma3")["input_ids"][0]
        answer = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]  # noqa: E731
        rows.append({"sample_id": pair.sample_id, "prompt_input_ids": [int(t) for t in prompt_ids],
                     "chosen_input_ids": answer(chosen), "rejected_input_ids": answer(rejected), "image": data.getvalue(),
                     "question": pair.question, "chosen": pair.chosen, "rejected": pair.rejected})
    return rows


def write_shard(rows: list[dict], path: Path) -> Path:
    from family_kit import write_rows

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_rows(path, rows)


def train_config(model_dir: Path, shard: Path, output_dir: Path, args, **overrides) -> dict:
    return {
        "model_dir": str(model_dir), "train_shards": [str(shard)], "output_dir": str(output_dir), "seed": 42,
        "max_steps": args.steps, "per_device_train_batch_size": args.micro_batch, "gradient_accumulation_steps": args.grad_accum,
        "learning_rate": 5e-6, "lr_scheduler_type": "cosine", "beta": 0.1, "loss_type": "sigmoid", "lora": LORA,
        "dtype": args.dtype, "device": args.device, "gradient_checkpointing": True, "checkpoint_every_steps": 1_000_000,
        "preemption_grace_seconds": 600, **overrides,
    }


def start_trainer(config: dict, work: Path, name: str) -> subprocess.Popen:
    path = work / f"{name}.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dpo_trainer.train", "--config", str(path)], cwd=TRAINER, env=env,
                            stdout=subprocess.PIPE, stderr=open(work / f"{name}.stderr", "w"), text=True)


def events_of(proc: subprocess.Popen, on_event=None) -> tuple[int, list[dict]]:
    events = []
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.strip().startswith("{"):
            events.append(json.loads(line))
            if on_event:
                on_event(events[-1])
    return proc.wait(), events


def run_ours(model_dir: Path, shard: Path, work: Path, args, name: str = "ours", **overrides) -> dict:
    started = time.time()
    code, events = events_of(start_trainer(train_config(model_dir, shard, work / name, args, **overrides), work, name))
    if code != 0:
        return {"error": f"exit {code}: {events[-1] if events else (work / f'{name}.stderr').read_text()[-2000:]}"}
    steps = [e for e in events if e["event"] == "step"]
    return {"end_times": [e["time"] for e in steps], "losses": [e["metrics"]["loss"] for e in steps],
            "peak_gpu_bytes": max(e["peak_memory_bytes"] for e in steps) if args.device == "cuda" else None,
            "wall_seconds": time.time() - started}


def run_trl(model_dir: Path, rows: list[dict], work: Path, args) -> dict:
    from trl_runner import run_child, write_pairs_file

    spec = {"model_dir": str(model_dir), "pairs_file": str(write_pairs_file(work / "trl-pairs.parquet", rows)),
            "output_dir": str(work / "trl"), "result": str(work / "trl-result.json"), "seed": 42, "steps": args.steps,
            "micro_batch": args.micro_batch, "grad_accum": args.grad_accum, "learning_rate": 5e-6,
            "lr_scheduler_type": "cosine", "dtype": args.dtype, "gradient_checkpointing": True, "device": args.device,
            "lora": LORA}
    (work / "trl-spec.json").write_text(json.dumps(spec))
    started = time.time()
    code, _, _ = run_child([sys.executable, str(BENCH / "trl_runner.py"), str(work / "trl-spec.json")], TRAINER, work / "trl.stderr")
    if code != 0:
        return {"error": f"exit {code}: {(work / 'trl.stderr').read_text()[-2000:]}"}
    return {**json.loads((work / "trl-result.json").read_text()), "wall_seconds": time.time() - started}


def mfu(params: int, tokens_per_pair: float, pairs_per_second: float) -> float:
    """Model FLOPs utilisation of a LoRA DPO step, counted as 2 x params FLOPs per token for each
    forward (policy on chosen + rejected, reference on both) and 2 x for the backward through the
    frozen base (activation gradients only; LoRA's own weight gradients are negligible): 8 x params
    per token of a pair's two sequences, against the dense bf16 peak."""
    return 8 * params * tokens_per_pair * pairs_per_second / H200_BF16_DENSE_FLOPS


def real_oom(model_dir: Path, shard: Path, work: Path, args) -> dict:
    """Micro-batch 64 without checkpointing: a real allocation failure, then the trainer's backoff."""
    config = train_config(model_dir, shard, work / "oom", args, max_steps=2, per_device_train_batch_size=64,
                          gradient_accumulation_steps=1, gradient_checkpointing=False)
    started = time.time()
    code, events = events_of(start_trainer(config, work, "oom"))
    backoffs = [e for e in events if e["event"] == "oom_backoff"]
    return {"exit_code": code, "backoffs": backoffs, "steps": len([e for e in events if e["event"] == "step"]),
            "last": events[-1] if events else None, "wall_seconds": time.time() - started}


def real_sigterm(model_dir: Path, shard: Path, work: Path, args, reference_losses: list[float]) -> dict:
    """SIGTERM after step 2: exit 75 with an emergency checkpoint, then resume from it."""
    proc = start_trainer(train_config(model_dir, shard, work / "term", args), work, "term")

    def on_event(event: dict) -> None:
        if event["event"] == "step" and event["step"] == 2:
            proc.send_signal(signal.SIGTERM)

    code, events = events_of(proc, on_event)
    saved = [e for e in events if e["event"] in ("checkpoint_saved", "preempted")]
    result: dict = {"exit_code": code, "events": [e["event"] for e in saved]}
    checkpoints = sorted((work / "term" / "checkpoints").glob("step-*"))
    if code != 75 or not checkpoints:
        return {**result, "error": f"expected exit 75 and a checkpoint, got {code}, {checkpoints}"}
    resume = train_config(model_dir, shard, work / "term", args, resume_from=str(checkpoints[-1]))
    code, events = events_of(start_trainer(resume, work, "resume"))
    steps = [e for e in events if e["event"] == "step"]
    result.update(resumed_from=checkpoints[-1].name, resume_exit_code=code,
                  resumed_losses=[e["metrics"]["loss"] for e in steps],
                  uninterrupted_losses=reference_losses[len(reference_losses) - len(steps):])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy dimensions, CPU, fp32: proves the script runs")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--skip-packed", action="store_true", help="no padding-free run of our trainer")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for families_dpo.json (default $OUT)")
    args = parser.parse_args()
    import pyarrow.parquet as pq
    import torch

    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.smoke:
        args.steps, args.grad_accum = min(args.steps, 3), min(args.grad_accum, 2)
    size = (64, 48) if args.smoke else IMAGE_SIZE
    pairs_per_step = args.micro_batch * args.grad_accum
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    report: dict = {"device": device_name, "smoke": args.smoke, "dtype": args.dtype, "steps": args.steps,
                    "micro_batch": args.micro_batch, "grad_accum": args.grad_accum, "image_size": size, "families": {}}

    def save() -> None:
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "families_dpo.json").write_text(json.dumps(report, indent=2))

    failed = False
    for index, family in enumerate(args.families):
        t0 = time.time()
        work = Path(tempfile.mkdtemp(prefix=f"bench-{family}-"))
        model_dir, params = build_model_folder(family, work, args.smoke, args.device, getattr(torch, args.dtype))
        rows = make_rows(model_dir, family, args.steps * pairs_per_step, size)
        shard = write_shard(rows, work / "shards" / "train-000.parquet")
        table = pq.read_table(shard).to_pylist()
        tokens = sum(len(r["prompt_input_ids"]) * 2 + len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in table) / len(table)
        section: dict = {"repo": FAMILIES[family]["repo"], "parameters": params, "tokens_per_pair": tokens,
                         "build_seconds": time.time() - t0}
        report["families"][family] = section
        ours = section["ours"] = run_ours(model_dir, shard, work, args)
        section["trl"] = {"skipped": True} if args.skip_trl else run_trl(model_dir, rows, work, args)
        # Padding-free batches (train.padding_free) where the family supports them.
        sides = ["ours", "trl"]
        if family in PACKABLE_FAMILIES and not args.skip_packed:
            section["ours_packed"] = run_ours(model_dir, shard, work, args, name="ours-packed", padding_free=True)
            sides.append("ours_packed")
        save()
        for name in sides:
            side = section[name]
            if "end_times" in side:
                side["pairs_per_second"] = steady_rate(side["end_times"], pairs_per_step)
                side["mfu"] = mfu(params, tokens, side["pairs_per_second"]) if args.device == "cuda" else None
            failed |= "error" in side
        for name in sides[:1] + sides[2:]:
            if "pairs_per_second" in section[name] and "pairs_per_second" in section["trl"]:
                ratio = section[f"{name}_over_trl"] = {"pairs_per_second": section[name]["pairs_per_second"] / section["trl"]["pairs_per_second"]}
                if args.device == "cuda":
                    ratio["peak_gpu_bytes"] = section[name]["peak_gpu_bytes"] / section["trl"]["peak_gpu_bytes"]
        save()
        print(json.dumps({family: {k: v for k, v in section.items() if k not in sides}
                          | {side: {k: section[side].get(k) for k in ("pairs_per_second", "peak_gpu_bytes", "mfu", "error")}
                             for side in sides}}), flush=True)
        if index == 0 and not args.skip_faults and "losses" in ours:
            section["oom"] = real_oom(model_dir, shard, work, args)
            save()
            section["sigterm"] = real_sigterm(model_dir, shard, work, args, ours["losses"])
            save()
            print(json.dumps({"oom": {k: section["oom"][k] for k in ("exit_code", "backoffs", "steps")},
                              "sigterm": section["sigterm"]}), flush=True)
            failed |= section["oom"]["exit_code"] != 0 or "error" in section["sigterm"] or section["sigterm"].get("resume_exit_code") != 0
        section["seconds"] = time.time() - t0
        save()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

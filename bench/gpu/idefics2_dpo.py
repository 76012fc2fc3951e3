"""The seed's Idefics2-8b DPO run, measured on one GPU: our trainer vs TRL's DPOTrainer.

    bash bench/gpu/run.sh                 # on the GPU machine (no internet needed)
    OMP_NUM_THREADS=1 trainer/.venv/bin/python bench/gpu/idefics2_dpo.py --smoke   # CPU, tiny dims

1. Builds a random-init Idefics2ForConditionalGeneration with Idefics2-8b's exact config
   (configs/models/idefics2-8b/config.json, vendored: 8,402,768,112 parameters) directly on the
   GPU in bf16 and saves it with a locally built processor: Idefics2's processor settings
   (image_seq_len 64 = perceiver latents, longest edge 980 / shortest 378, no image splitting, as
   in the seed's training script), Idefics2's chat template, and a byte-level BPE tokenizer padded
   to the model's 32,000 base ids so that <fake_token_around_image> / <image> / <end_of_utterance>
   get ids 32000 / 32001 / 32002 as in the real checkpoint. Random weights: the loss is meaningless,
   the cost per step is the real model's.
2. Generates image pairs (the demo scenes, thumbnailed to 490 px = half the processor's longest
   edge, the seed's format setting) and writes them as token shards for our trainer (prompt ids
   from the processor itself, so the image placeholder expansion is Idefics2's) and as
   conversational rows for TRL.
3. Runs, one after the other, each in its own process: `python -m dpo_trainer.train` and TRL 1.16's
   DPOTrainer (bench/trl_runner.py), both bf16 + LoRA (r 16, alpha 32, all linear layers),
   gradient checkpointing, per-device batch 2, the seed's learning rate 5e-6 with cosine decay,
   seed 42, `--steps` optimizer steps.
4. Reports peak GPU memory (torch.cuda.max_memory_allocated over the whole child process) against
   the seed's 32.3 GB bf16 + LoRA estimate, and training pairs/s over steps 2..N (model load and
   step 1 excluded, as in bench/trainer_vs_trl.py), plus ratios ours / TRL. Writes
   idefics2_dpo.json to $OUT (or --out).

Gradient accumulation: the seed uses 32 (64 pairs per step). 20 such steps are 1,280 pairs per
trainer; at the few pairs/s an 8B model with 490 px images trains on one H100 that is several
minutes per trainer, so the default here is --grad-accum 8 (16 pairs per step, 320 pairs per
trainer) to fit both trainers and two model loads in 10 minutes. Accumulation does not change
peak memory (that is set by the micro-batch of 2) nor pairs/s beyond the per-step overhead;
pass --grad-accum 32 where time allows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
TRAINER = REPO / "trainer"
sys.path.insert(0, str(TRAINER / "tests"))
sys.path.insert(0, str(BENCH))

from trl_runner import run_child, steady_rate, write_pairs_file  # noqa: E402

SEED_ESTIMATE_GB = 32.3  # the seed's bf16 + LoRA table (model + reference + LoRA grads/moments), GB = 1e9 B
# Idefics2-8b's chat template (HuggingFaceM4/idefics2-8b, tokenizer_config.json).
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def model_config(smoke: bool):
    from transformers import Idefics2Config

    raw = json.loads((REPO / "configs" / "models" / "idefics2-8b" / "config.json").read_text())
    if smoke:
        # Same architecture, toy sizes: 2 vision layers at 56 px, 1 resampler layer with 8
        # latents, 2 Mistral layers of width 64, 512 base token ids.
        raw["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, image_size=56)
        raw["perceiver_config"].update(resampler_depth=1, resampler_n_latents=8, resampler_n_heads=2,
                                       resampler_head_dim=16, num_key_value_heads=1)
        raw["text_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=515)
        raw["image_token_id"] = 513
    return Idefics2Config.from_dict(raw)


def build_tokenizer(base_ids: int):
    """Mistral's layout (<unk> <s> </s> = 0 1 2), a byte-level BPE trained on the demo sentences
    (dpo_trainer.build_tiny_model's corpus), and unused ids up to `base_ids` (32,000) so that the
    processor's special tokens land at Idefics2's ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from dpo_trainer.build_tiny_model import demo_corpus

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(base_ids, 500), min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(demo_corpus(), trainer=trainer)
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]),
    ])
    filler = base_ids - backend.get_vocab_size()
    if filler < 0:
        raise SystemExit(f"tokenizer has {backend.get_vocab_size()} ids, more than the model's {base_ids} base ids")
    backend.add_special_tokens([AddedToken(f"<unused_{i}>", special=True, normalized=False) for i in range(filler)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
        model_max_length=4096, padding_side="right", clean_up_tokenization_spaces=False,
    )


def build_processor(config, smoke: bool):
    """Idefics2Processor with Idefics2's settings around a locally trained tokenizer."""
    from transformers import Idefics2Processor

    # + <fake_token_around_image>, <image>, <end_of_utterance>, added by the processor in that order
    tokenizer = build_tokenizer(config.text_config.vocab_size - 3)
    try:
        from transformers import Idefics2ImageProcessor as ImageProcessor

        ImageProcessor()  # needs torchvision in transformers 5
    except (ImportError, ValueError):
        from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil as ImageProcessor
    edge = config.vision_config.image_size
    image_processor = ImageProcessor(
        do_image_splitting=False, size={"longest_edge": edge, "shortest_edge": 378 if not smoke else edge // 2}
    )
    processor = Idefics2Processor(
        image_processor=image_processor, tokenizer=tokenizer,
        image_seq_len=config.perceiver_config.resampler_n_latents, chat_template=IDEFICS2_CHAT_TEMPLATE,
    )
    if processor.image_token_id != config.image_token_id:
        raise SystemExit(f"<image> got id {processor.image_token_id}, the model expects {config.image_token_id}")
    return processor


def build_model_folder(out: Path, smoke: bool, device: str, dtype) -> tuple[Path, int]:
    import torch
    from transformers import Idefics2ForConditionalGeneration

    config = model_config(smoke)
    processor = build_processor(config, smoke)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):  # random init where the weights will live: seconds, not minutes
        model = Idefics2ForConditionalGeneration(config)
    torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out, params


def render_pairs(model_dir: Path, n: int, thumbnail_edge: int) -> list[dict]:
    from demo_data import generate_pairs
    from PIL import Image

    rows = []
    for p in generate_pairs(n, 1, "train"):
        image = Image.open(io.BytesIO(p.image_jpeg)).convert("RGB").resize((thumbnail_edge, thumbnail_edge))
        data = io.BytesIO()
        image.save(data, format="JPEG", quality=90)
        rows.append({"sample_id": p.sample_id, "question": p.question, "chosen": p.chosen,
                     "rejected": p.rejected, "image": data.getvalue()})
    return rows


def write_token_shard(model_dir: Path, rows: list[dict], path: Path) -> Path:
    """Our trainer's shard format (CONTRACT.md), tokenized with the model's own processor."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from demo_data import SHARD_SCHEMA
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    tok = processor.tokenizer
    columns: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    for row in rows:
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
        prompt_text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        image = Image.open(io.BytesIO(row["image"])).convert("RGB")
        prompt_ids = processor(text=[prompt_text], images=[[image]])["input_ids"][0]
        columns["sample_id"].append(row["sample_id"])
        columns["prompt_input_ids"].append([int(i) for i in prompt_ids])
        for name in ("chosen", "rejected"):
            answer = [{"role": "assistant", "content": [{"type": "text", "text": row[name]}]}]
            full = processor.apply_chat_template(prompt + answer, tokenize=False)
            completion = full[len(prompt_text):]  # TRL's split: the text after the generation prompt
            ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            columns[f"{name}_input_ids"].append(ids)
        columns["image"].append(row["image"])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=SHARD_SCHEMA), path)
    return path


def run_ours(work: Path, model_dir: Path, shard: Path, args) -> dict:
    config = {
        "model_dir": str(model_dir), "train_shards": [str(shard)], "output_dir": str(work / "ours"),
        "seed": 42, "max_steps": args.steps, "per_device_train_batch_size": args.micro_batch,
        "gradient_accumulation_steps": args.grad_accum, "learning_rate": 5e-6, "lr_scheduler_type": "cosine",
        "beta": 0.1, "loss_type": "sigmoid", "lora": LORA, "dtype": args.dtype, "device": args.device,
        "gradient_checkpointing": True, "checkpoint_every_steps": 1_000_000, "preemption_grace_seconds": 600,
    }
    path = work / "ours.json"
    path.write_text(json.dumps(config))
    started = time.time()
    code, rss, stdout = run_child(
        [sys.executable, "-m", "dpo_trainer.train", "--config", str(path)], TRAINER, work / "ours.stderr"
    )
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    if code != 0:
        return {"error": f"exit {code}: {events[-1] if events else (work / 'ours.stderr').read_text()[-2000:]}"}
    steps = [e for e in events if e["event"] == "step"]
    return {
        "end_times": [e["time"] for e in steps], "losses": [e["metrics"]["loss"] for e in steps],
        "peak_gpu_bytes": max(e["peak_memory_bytes"] for e in steps) if args.device == "cuda" else None,
        "peak_rss_mib": rss, "wall_seconds": time.time() - started,
    }


def run_trl(work: Path, model_dir: Path, rows: list[dict], args) -> dict:
    pairs_file = write_pairs_file(work / "trl-pairs.parquet", rows)
    spec = {
        "model_dir": str(model_dir), "pairs_file": str(pairs_file), "output_dir": str(work / "trl"),
        "result": str(work / "trl-result.json"), "seed": 42, "steps": args.steps, "micro_batch": args.micro_batch,
        "grad_accum": args.grad_accum, "learning_rate": 5e-6, "lr_scheduler_type": "cosine", "dtype": args.dtype,
        "gradient_checkpointing": True, "device": args.device, "lora": LORA,
    }
    path = work / "trl-spec.json"
    path.write_text(json.dumps(spec))
    started = time.time()
    code, rss, _ = run_child([sys.executable, str(BENCH / "trl_runner.py"), str(path)], TRAINER, work / "trl.stderr")
    if code != 0:
        return {"error": f"exit {code}: {(work / 'trl.stderr').read_text()[-2000:]}"}
    result = json.loads((work / "trl-result.json").read_text())
    return {**result, "peak_rss_mib": rss, "wall_seconds": time.time() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy dimensions, CPU, fp32: proves the script runs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=8)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for idefics2_dpo.json (default $OUT)")
    parser.add_argument("--work", help="scratch folder (default: a new temporary folder)")
    args = parser.parse_args()
    import torch

    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.smoke:
        args.steps, args.grad_accum = min(args.steps, 3), min(args.grad_accum, 2)
    t0 = time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-idefics2-"))
    model_dir, params = build_model_folder(work / "model", args.smoke, args.device, getattr(torch, args.dtype))
    built = time.time() - t0
    edge = model_config(args.smoke).vision_config.image_size // 2  # half the longest edge: 490 px
    pairs_per_step = args.micro_batch * args.grad_accum
    rows = render_pairs(model_dir, args.steps * pairs_per_step, edge)
    shard = write_token_shard(model_dir, rows, work / "shards" / "train-000.parquet")
    import pyarrow.parquet as pq

    prompt_len = len(pq.read_table(shard).column("prompt_input_ids")[0].as_py())
    ours = run_ours(work, model_dir, shard, args)
    trl = {"skipped": True} if args.skip_trl else run_trl(work, model_dir, rows, args)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    result: dict = {
        "device": device_name, "smoke": args.smoke, "parameters": params, "dtype": args.dtype,
        "steps": args.steps, "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
        "pairs_per_step": pairs_per_step, "thumbnail_edge_px": edge, "prompt_tokens": prompt_len,
        "seed_estimate_gb": SEED_ESTIMATE_GB, "model_build_seconds": built, "ours": ours, "trl": trl,
    }
    print(f"{'smoke: toy Idefics2' if args.smoke else 'Idefics2-8b config'}, {params:,} parameters, {args.dtype}, "
          f"{device_name}; {args.steps} steps x {pairs_per_step} pairs (micro-batch {args.micro_batch} x "
          f"accumulation {args.grad_accum}), {edge} px images, prompt {prompt_len} tokens")
    for name, side in (("ours", ours), ("TRL", trl)):
        if "end_times" in side:
            side["pairs_per_second"] = steady_rate(side["end_times"], pairs_per_step)
            gpu = side.get("peak_gpu_bytes")
            mem = (f"peak GPU {gpu / 1e9:.1f} GB ({gpu / 1e9 / SEED_ESTIMATE_GB:.2f}x the seed's 32.3 GB estimate)"
                   if gpu else f"peak RSS {side['peak_rss_mib']:.0f} MiB")
            print(f"{name:5} {side['pairs_per_second']:8.2f} pairs/s  {mem}  (child wall {side['wall_seconds']:.0f} s)")
        else:
            print(f"{name:5} {side.get('error', 'skipped')}")
    if "pairs_per_second" in ours and "pairs_per_second" in trl:
        result["ratios_ours_over_trl"] = {"pairs_per_second": ours["pairs_per_second"] / trl["pairs_per_second"]}
        key = "peak_gpu_bytes" if args.device == "cuda" else "peak_rss_mib"
        result["ratios_ours_over_trl"][key] = ours[key] / trl[key]
        print("ours / TRL: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios_ours_over_trl"].items()))
    result["total_seconds"] = time.time() - t0
    print(f"total {result['total_seconds']:.0f} s")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "idefics2_dpo.json").write_text(json.dumps(result, indent=2))
    if "error" in ours or "error" in trl:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The seed's Python data pipeline, the anchor of bench/data: `datasets.map` with the HF
processor's chat template and a PIL thumbnail to half the processor's longest edge (the "DPO for
VLMs" recipe), then TRL-style tokenization (the processor expands the image placeholders; answers
get eos), num_proc=2, then Parquet.

    python bench/data/seed_pipeline.py --data DIR --model PROCESSOR_DIR --out DIR

Prints one JSON line: seconds per phase and rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from datasets import load_dataset
from transformers import AutoProcessor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model)
    data = Path(args.data) / "data"
    ds = load_dataset(
        "parquet",
        data_files={"train": sorted(str(p) for p in data.glob("train-*.parquet")), "test": sorted(str(p) for p in data.glob("test-*.parquet"))},
        cache_dir=str(Path(args.out) / "hf-cache"),
    )
    t_loaded = time.perf_counter()
    # Wall-clock bounds of the timed phases, so the bench can count the CPU used inside them.
    window_start_ms = time.time() * 1000
    size = processor.image_processor.size

    def dim(key: str) -> int:
        return (size.get(key) if isinstance(size, dict) else getattr(size, key, None)) or 0

    max_size = (dim("longest_edge") or max(dim("height"), dim("width"), dim("shortest_edge"))) // 2

    def format(example):
        # The recipe's formatting function.
        image = example["image"]
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.thumbnail((max_size, max_size))
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example["question"]}]}]
        chosen = [{"role": "assistant", "content": [{"type": "text", "text": example["chosen"]}]}]
        rejected = [{"role": "assistant", "content": [{"type": "text", "text": example["rejected"]}]}]
        return {
            "images": [image],
            "prompt": processor.apply_chat_template(prompt, tokenize=False),
            "chosen": processor.apply_chat_template(chosen, tokenize=False),
            "rejected": processor.apply_chat_template(rejected, tokenize=False),
        }

    ds = ds.map(format, remove_columns=ds["train"].column_names, num_proc=args.num_proc)
    t_formatted = time.perf_counter()

    tokenizer = processor.tokenizer

    def tokenize(example):
        # TRL's tokenize_row: the processor expands the image placeholders in the prompt; answers
        # are tokenized without special tokens and get eos.
        prompt_ids = processor(text=example["prompt"])["input_ids"][0]
        return {
            "prompt_input_ids": prompt_ids,
            "chosen_input_ids": tokenizer(example["chosen"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
            "rejected_input_ids": tokenizer(example["rejected"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
        }

    ds = ds.map(tokenize, remove_columns=["prompt", "chosen", "rejected"], num_proc=args.num_proc)
    t_tokenized = time.perf_counter()
    rows = 0
    for split, d in ds.items():
        d.to_parquet(str(Path(args.out) / f"{split}.parquet"))
        rows += d.num_rows
    t_written = time.perf_counter()
    window_end_ms = time.time() * 1000
    print(json.dumps({
        "rows": rows,
        "load_seconds": t_loaded - t0,
        "format_seconds": t_formatted - t_loaded,
        "tokenize_seconds": t_tokenized - t_formatted,
        "parquet_seconds": t_written - t_tokenized,
        "pipeline_seconds": t_written - t_loaded,
        "window_start_ms": window_start_ms,
        "window_end_ms": window_end_ms,
    }))


if __name__ == "__main__":
    main()

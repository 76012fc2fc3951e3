"""Shared by bench/trainer_vs_trl.py and bench/gpu/idefics2_dpo.py: run a child process and read
its peak RSS, and the TRL side of a comparison -- TRL's DPOTrainer in its own process.

    trainer/.venv/bin/python bench/trl_runner.py SPEC.json

SPEC.json: model_dir, pairs_file (parquet: question, chosen, rejected, image = JPEG bytes),
output_dir, result (path of the JSON this writes), seed, steps, micro_batch, grad_accum,
learning_rate, lr_scheduler_type, dtype ("float32" | "bfloat16"), gradient_checkpointing, device
("cpu" | "cuda"), lora {r, alpha, dropout}. The rows are given to TRL in its conversational VLM
format (prompt/chosen/rejected messages + `images`) with the model folder's own processor, so TRL
tokenizes and processes the images itself, inside its training loop's collator.

Result: end_times (unix time at the end of each optimizer step, from a TrainerCallback),
losses, num_tokens (cumulative non-padding tokens, TRL's own log), trainable_params, peak_gpu_bytes (torch.cuda.max_memory_allocated over the whole process, as our trainer's
peak_memory_bytes on cuda; null on cpu).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_child(argv: list[str], cwd: Path, stderr_path: Path) -> tuple[int, float, str]:
    """Run a child to completion; return (exit code, peak RSS in MiB of that child alone, stdout)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd, text=True)
        stdout = proc.stdout.read()  # type: ignore[union-attr]
        # wait4 (not RUSAGE_CHILDREN, which is the max over every child so far): this child only.
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, stdout  # Linux: ru_maxrss in KiB


def steady_rate(end_times: list[float], pairs_per_step: int) -> float:
    """Pairs/s over steps 2..N from the end-of-step timestamps of steps 1..N (step 1 excluded)."""
    if len(end_times) < 2:
        raise SystemExit("need at least 2 steps to time the steady state")
    return (len(end_times) - 1) * pairs_per_step / (end_times[-1] - end_times[0])


def write_pairs_file(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {k: [r[k] for r in rows] for k in ("question", "chosen", "rejected", "image")}
    pq.write_table(pa.table(columns), path)
    return path


def main(spec_path: str) -> None:
    import io

    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    torch.manual_seed(spec["seed"])
    table = pq.read_table(spec["pairs_file"]).to_pylist()

    def rows():
        for p in table:
            yield {
                "images": [Image.open(io.BytesIO(p["image"])).convert("RGB")],
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p["question"]}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": p["chosen"]}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": p["rejected"]}]}],
            }

    dataset = Dataset.from_generator(rows)
    dtype = getattr(torch, spec["dtype"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
    from dpo_trainer.vision_processors import IMAGE_ONLY_FAMILIES, load_image_only_processor

    # The processor our trainer uses too: Qwen's without its (torchvision) video processor.
    model_type = json.loads((Path(spec["model_dir"]) / "config.json").read_text())["model_type"]
    processor = (load_image_only_processor(spec["model_dir"], model_type) if model_type in IMAGE_ONLY_FAMILIES
                 else AutoProcessor.from_pretrained(spec["model_dir"], local_files_only=True))
    model = AutoModelForImageTextToText.from_pretrained(spec["model_dir"], dtype=dtype, local_files_only=True)
    cuda = spec["device"] == "cuda"
    end_times: list[float] = []
    losses: list[float] = []
    num_tokens: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
            if cuda:
                torch.cuda.synchronize()
            end_times.append(time.time())

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ARG002
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
            if logs and "num_tokens" in logs:  # cumulative attention-mask sum (image tokens included)
                num_tokens.append(float(logs["num_tokens"]))

    config = DPOConfig(
        output_dir=spec["output_dir"], report_to=[], use_cpu=not cuda,
        bf16=spec["dtype"] == "bfloat16", fp16=False,
        per_device_train_batch_size=spec["micro_batch"], gradient_accumulation_steps=spec["grad_accum"],
        max_steps=spec["steps"], learning_rate=spec["learning_rate"], lr_scheduler_type=spec["lr_scheduler_type"],
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], seed=spec["seed"],
        gradient_checkpointing=spec["gradient_checkpointing"], logging_steps=1, save_strategy="no",
        max_length=None, dataloader_num_workers=0,
    )
    lora = spec["lora"]
    peft = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules="all-linear")
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                         peft_config=peft, callbacks=[StepTimes()])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    Path(spec["result"]).write_text(json.dumps({
        "end_times": end_times, "losses": losses, "num_tokens": num_tokens, "trainable_params": trainable,
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
    }))


if __name__ == "__main__":
    main(sys.argv[1])

"""PyTorch side of bench/eval/ortVsTorch.ts: scores the same preference pairs with the same model.

    python bench/eval/torch_score.py MODEL_DIR INPUTS.json THREADS REPEATS

Times what the trainer's evaluator does per batch (forward + completion log-probs, fp32, CPU,
no autograd) after one warm-up pass; prints {"pairs_per_second": ..., "logps": [...]} on stdout.
"""

import json
import sys
import time

import torch

from dpo_trainer.modeling import load_base_model

model_dir, inputs_path, threads, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
loaded = load_base_model(model_dir, torch.float32, torch.device("cpu"))
model = loaded.model.eval()
raw = json.load(open(inputs_path))
pixels_all = torch.frombuffer(bytearray(open(raw["pixels_path"], "rb").read()), dtype=torch.float32).reshape(-1, *raw["pixel_shape"])


def batches():
    for b in raw["batches"]:
        ids = torch.tensor(b["input_ids"], dtype=torch.long)
        mask = torch.tensor(b["attention_mask"], dtype=torch.long)
        completion = torch.tensor(b["completion_mask"], dtype=torch.float32)
        yield ids, mask, completion, pixels_all[b["pixel_rows"]]


@torch.no_grad()
def score(ids, mask, completion, pixels):
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False).logits[:, :-1, :].float()
    token = logits.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token * completion[:, 1:]).sum(-1)


prepared = list(batches())
logps = [score(*b) for b in prepared]  # warm-up, and the values for the cross-check
start = time.perf_counter()
for _ in range(repeats):
    for b in prepared:
        score(*b)
seconds = time.perf_counter() - start
pairs = sum(len(b[0]) for b in prepared) // 2 * repeats
print(json.dumps({"pairs_per_second": pairs / seconds, "seconds": seconds, "logps": torch.cat(logps).tolist()}))

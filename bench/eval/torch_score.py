"""PyTorch side of bench/eval/ortVsTorch.ts: scores the same preference pairs with the same model.

    python bench/eval/torch_score.py MODEL_DIR INPUTS.json THREADS REPEATS [ADAPTER_DIR]

Times what the trainer's evaluator does per batch (forward + completion log-probs, fp32, CPU,
no autograd) after one warm-up pass and prints {"pairs_per_second": ..., "cpu_ms_per_pair": ...,
"logps": [...]}.
With ADAPTER_DIR it also times a base-vs-DPO evaluation as trainer/dpo_trainer/evaluate.py runs
it: the base model's pass, then the adapter's pass with the reference (adapter disabled) --
three forwards per batch -- as "evaluation_pairs_per_second".
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
start, cpu_start = time.perf_counter(), time.process_time()
for _ in range(repeats):
    for b in prepared:
        score(*b)
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
pairs = sum(len(b[0]) for b in prepared) // 2 * repeats
# CPU seconds of this process (user + system) as well: on a shared machine they move much less
# with the load than wall-clock rates.
result = {"pairs_per_second": pairs / seconds, "cpu_ms_per_pair": 1000 * cpu_seconds / pairs, "seconds": seconds, "logps": torch.cat(logps).tolist()}
if len(sys.argv) > 5:
    from dpo_trainer.evaluate import load_adapter

    base_model = model
    peft = load_adapter(load_base_model(model_dir, torch.float32, torch.device("cpu")).model, sys.argv[5]).eval()

    def evaluation_pass() -> None:
        global model
        for b in prepared:  # evaluate.py with adapter_dir null: the base is its own reference
            model = base_model
            score(*b)
        for b in prepared:  # evaluate.py with the adapter: policy, then reference with it disabled
            model = peft
            score(*b)
            with peft.disable_adapter():
                score(*b)

    evaluation_pass()  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        evaluation_pass()
    result["evaluation_pairs_per_second"] = pairs / (time.perf_counter() - start)
    result["evaluation_cpu_ms_per_pair"] = 1000 * (time.process_time() - cpu_start) / pairs
print(json.dumps(result))

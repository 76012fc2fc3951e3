"""Export a model (base, or base + merged LoRA adapter) to ONNX for CPU scoring in Node.

    python -m dpo_trainer.export --config CONFIG.json

CONFIG.json: {"model_dir": "/abs/model", "adapter_dir": null | "/abs/adapter", "out_dir": "/abs/out"}

The adapter is merged into the weights (`merge_and_unload`), so the exported graph is one plain
model: the evaluator in Node never needs PEFT. Signature (also written to out_dir/signature.json):

  inputs   input_ids       int64   [batch, seq]            right-padded token ids
           attention_mask  int64   [batch, seq]            1 for real tokens, 0 for padding
           segment_ids     int64   [batch, seq]            0 = shared prefix; k > 0 = the k-th packed branch
                                                           (all 0: a plain causal row; see packed_attention)
           pixel_values    float32 [batch, 3, H, W]        vision models only; the image processor's output
           first_scored    int64   []                      first position f (1 <= f <= every row's length)
                                                           whose token is scored; logits are only computed
                                                           from position f - 1 on
  outputs  token_logps     float32 [batch, seq - f]        [:, j] = log p(input_ids[:, f + j] | the tokens it sees:
                                                           input_ids[:, :f + j] in a plain row)
           last_logits     float32 [batch, vocab]          logits after each row's last real token
           logits          float32 [batch, seq - f + 1, vocab]  logits of positions f - 1 .. seq - 1

Scoring completions: f = the shortest prompt of the batch, then sum `token_logps` over each
row's completion. Packing: a pair's chosen and rejected completions share prompt and image, so
Node sends prompt + chosen (segment 1) + rejected (segment 2) as one row; each branch attends to
the prompt and to itself, with positions continuing the prompt's -- the values of two plain rows,
while the prompt, its image and the vision tower are computed once instead of twice. A yes/no answer or a greedy step reads `last_logits` (f = the shortest row).
The graph builds its own 4-D attention mask and position ids from attention_mask and segment_ids,
and tabulates the rotary embedding per position (RotaryTable). Prompts (image tokens included) are most of a sequence, so skipping their vocabulary projection
and log-softmax is most of the output layer's cost; f = 1 gives every position (parity tests).
The attention is exported in its eager form (it takes the packed 4-D mask as it is). onnxruntime's
fused com.microsoft MultiHeadAttention was tried in its place: no faster on CPU at these sizes.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. The dynamo exporter needs
onnx + onnxscript (not dependencies of the trainer) and the TorchScript path traces the tiny LLaVA
on CPU without them. Weights over 2 GB go to external data files next to model.onnx (the exporter
does that by itself); every file written is listed in out_dir/manifest.json, written last.

Writes: model.onnx (+ external data), signature.json, manifest.json. Exit statuses as train/evaluate;
a model that cannot be loaded or exported ends as ModelLoadError (exit 65) naming the model folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .cli import config_command
from .config import ONNX_UNEXPORTABLE_MODEL_TYPES, ExportConfig
from .errors import ExitCode, ModelLoadError
from .evaluate import load_adapter
from .modeling import load_base_model

SIGNATURE_FORMAT = "dpo-onnx-export/1"
OPSET = 17


def packed_attention(attention_mask: torch.Tensor, segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention mask, position ids and predicting position of rows that may pack several
    completions after one shared prompt (segment 0 = the shared prefix, k > 0 = the k-th branch).

    Token i sees token j iff j <= i, j is a real token and j is in the prefix or in i's own branch;
    its position is the number of tokens it structurally sees minus one (so each branch continues
    the prompt's positions), and it is predicted at the last token before it that it sees. With
    every segment 0 these are the causal + padding mask, arange positions and i - 1: the plain
    forward. Returns the additive float mask [batch, 1, seq, seq] the eager attention takes,
    position_ids [batch, seq] and previous [batch, seq]."""
    positions = torch.arange(attention_mask.shape[1])
    causal = positions.unsqueeze(0) <= positions.unsqueeze(1)  # [query, key]
    query_segment, key_segment = segment_ids.unsqueeze(-1), segment_ids.unsqueeze(1)
    structural = causal.unsqueeze(0) & ((key_segment == 0) | (key_segment == query_segment))
    visible = structural & attention_mask.bool().unsqueeze(1)
    mask = torch.zeros(visible.shape, dtype=torch.float32).masked_fill(~visible, torch.finfo(torch.float32).min).unsqueeze(1)
    position_ids = structural.long().sum(-1) - 1
    before = structural & (positions.unsqueeze(0) < positions.unsqueeze(1)).unsqueeze(0)
    previous = (before.long() * positions).amax(-1)
    return mask, position_ids, previous


class RotaryTable(torch.nn.Module):
    """A rotary embedding evaluated once per position, then looked up per row.

    Packed rows have per-row position ids, and cos/sin of [batch, seq, head_dim] cost more than
    a layer's matmuls in onnxruntime; positions are always < seq, so the wrapped module computes
    the table for arange(seq) and each row gathers from it (the same values)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.inner(x, torch.arange(position_ids.shape[1]).unsqueeze(0))
        return cos[0][position_ids], sin[0][position_ids]


def tabulate_rotary(model: torch.nn.Module) -> None:
    for name, module in list(model.named_modules()):
        if name.endswith("rotary_emb") and not isinstance(module, RotaryTable):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], RotaryTable(module))


class ScoringGraph(torch.nn.Module):
    """The exported function: the model's forward plus the log-prob reductions Node needs."""

    def __init__(self, model: Any, has_vision: bool):
        super().__init__()
        self.model = model
        self.has_vision = has_vision

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, segment_ids: torch.Tensor, pixel_values: torch.Tensor | None, first_scored: torch.Tensor):
        mask, position_ids, previous = packed_attention(attention_mask, segment_ids)
        kept = torch.arange(first_scored - 1, input_ids.shape[1])
        inputs: dict[str, Any] = {"attention_mask": mask, "position_ids": position_ids, "use_cache": False, "logits_to_keep": kept}
        if self.has_vision and self.model.config.model_type == "llava":
            inputs["inputs_embeds"] = self.llava_embeddings(input_ids, pixel_values)
        elif self.has_vision:
            # Other families go through their own forward; tracing may fix shapes it branches on,
            # which the parity test (at untraced shapes) would catch for any family added here.
            inputs.update(input_ids=input_ids, pixel_values=pixel_values)
        else:
            inputs["input_ids"] = input_ids
        logits = self.model(**inputs).logits.float()
        # log_softmax, not gather - logsumexp as in modeling.completion_logps: ORT's LogSoftmax
        # kernel is several times faster than its ReduceLogSumExp on [batch, seq, vocab].
        # Token t is predicted at `previous[t]` (t - 1, or the prompt's last token for the first
        # token of a packed branch); one flat gather picks log p(token) there.
        log_probs = logits.log_softmax(-1)
        batch, kept_len, vocab = log_probs.shape
        at = (previous[:, first_scored:] - (first_scored - 1)).clamp(min=0)
        flat = (torch.arange(batch).unsqueeze(-1) * kept_len + at) * vocab + input_ids[:, first_scored:]
        token_logps = log_probs.reshape(-1)[flat]
        last = attention_mask.sum(-1) - first_scored
        last_logits = logits[torch.arange(logits.shape[0]), last]
        return token_logps, last_logits, logits

    def llava_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """LlavaModel's image merge, written so a trace stays valid at every batch size.

        transformers splits the image features into a per-image Python list and masked_scatters
        them; the TorchScript tracer records that list at the traced batch size (the ONNX graph
        then fails on any other batch). Here the k-th <image> token of the batch takes the k-th
        image feature row by a cumsum index -- the same placement, as tensor ops."""
        config = self.model.config
        llava = self.model.model
        embeds = llava.get_input_embeddings()(input_ids)
        vision = llava.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        layer = config.vision_feature_layer
        if not isinstance(layer, int):
            raise ModelLoadError("export supports a single vision_feature_layer (LLaVA-1.5); this model selects several")
        features = vision.hidden_states[layer]
        if config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        features = llava.multi_modal_projector(features).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        is_image = input_ids == config.image_token_id
        order = (is_image.reshape(-1).long().cumsum(0) - 1).clamp(min=0).reshape(input_ids.shape)
        return torch.where(is_image.unsqueeze(-1), features[order], embeds)


def example_inputs(loaded: Any, model: Any) -> dict[str, torch.Tensor]:
    """A batch of two right-padded rows (one image each) to trace with."""
    spec = loaded.spec
    prompt = [1] if spec.image_token_id is None else [1] + [spec.image_token_id] * (spec.image_tokens_per_image or 1)
    length = len(prompt) + 6
    ids = torch.full((2, length), spec.pad_token_id, dtype=torch.long)
    mask = torch.zeros((2, length), dtype=torch.long)
    for row, extra in enumerate((6, 3)):
        tokens = prompt + [10 + i for i in range(extra)]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    # Row 0 packs two branches after its prompt, so the trace exercises the packed path.
    segments = torch.zeros((2, length), dtype=torch.long)
    segments[0, len(prompt) + 3 : len(prompt) + 6] = 1
    segments[0, len(prompt) : len(prompt) + 3] = 2
    inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask, "segment_ids": segments}
    if spec.has_vision:
        size = loaded.image_processor.crop_size if hasattr(loaded.image_processor, "crop_size") else None
        height = int(size["height"]) if size else int(model.config.vision_config.image_size)
        width = int(size["width"]) if size else height
        inputs["pixel_values"] = torch.randn(2, 3, height, width)
    inputs["first_scored"] = torch.tensor(len(prompt), dtype=torch.long)
    return inputs


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_unexportable(model_dir: str) -> None:
    """Refuse, before loading any weights, a family whose export would not score correctly."""
    config_file = Path(model_dir) / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        return  # load_base_model reports a missing or broken config itself
    if model_type in ONNX_UNEXPORTABLE_MODEL_TYPES:
        refused = ONNX_UNEXPORTABLE_MODEL_TYPES[model_type]
        raise ModelLoadError(
            f"{model_dir}: ONNX export of {refused['family']} is not supported ({refused['reason']}); score it with"
            " PyTorch instead: python -m dpo_trainer.evaluate (the pipeline's evaluate stage does so with"
            " evaluate.engine auto or pytorch)"
        )


@torch.no_grad()
def export(config: ExportConfig) -> dict[str, Any]:
    out = Path(config.out_dir)
    refuse_unexportable(config.model_dir)
    if (out / "manifest.json").exists():
        raise ModelLoadError(f"out_dir {out} already holds a complete export; choose an empty folder")
    what = f"{config.model_dir}" + (f" + adapter {config.adapter_dir}" if config.adapter_dir else "")
    loaded = load_base_model(config.model_dir, torch.float32, torch.device("cpu"))
    model = loaded.model
    if config.adapter_dir:
        model = load_adapter(model, config.adapter_dir).merge_and_unload()
    model.set_attn_implementation("eager")  # takes the packed 4-D mask as it is
    tabulate_rotary(model)
    model.eval()
    graph = ScoringGraph(model, loaded.spec.has_vision).eval()
    inputs = example_inputs(loaded, model)
    names = list(inputs)
    dynamic_axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "segment_ids": {0: "batch", 1: "seq"},
        "token_logps": {0: "batch", 1: "scored"},
        "last_logits": {0: "batch"},
        "logits": {0: "batch", 1: "scored_plus_1"},
    }
    if "pixel_values" in inputs:
        dynamic_axes["pixel_values"] = {0: "batch"}
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.time()
    try:
        forward_args = (inputs["input_ids"], inputs["attention_mask"], inputs["segment_ids"], inputs.get("pixel_values"), inputs["first_scored"])
        torch.onnx.export(
            graph,
            forward_args,
            str(tmp / "model.onnx"),
            dynamo=False,
            input_names=names,
            output_names=["token_logps", "last_logits", "logits"],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    except Exception as exc:  # the exporter raises many types for unsupported operators
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"cannot export {what} to ONNX: {type(exc).__name__}: {str(exc)[:800]}") from None
    spec = loaded.spec
    signature = {
        "format": SIGNATURE_FORMAT,
        "opset": OPSET,
        "model_type": model.config.model_type,
        "merged_adapter": config.adapter_dir is not None,
        "inputs": {
            "input_ids": {"dtype": "int64", "shape": ["batch", "seq"]},
            "attention_mask": {"dtype": "int64", "shape": ["batch", "seq"]},
            "segment_ids": {"dtype": "int64", "shape": ["batch", "seq"]},
            **(
                {"pixel_values": {"dtype": "float32", "shape": ["batch", *list(inputs["pixel_values"].shape[1:])]}}
                if "pixel_values" in inputs
                else {}
            ),
            "first_scored": {"dtype": "int64", "shape": []},
        },
        "outputs": {
            "token_logps": {"dtype": "float32", "shape": ["batch", "seq - first_scored"]},
            "last_logits": {"dtype": "float32", "shape": ["batch", "vocab"]},
            "logits": {"dtype": "float32", "shape": ["batch", "seq - first_scored + 1", "vocab"]},
        },
        "vocab_size": spec.vocab_size,
        "pad_token_id": spec.pad_token_id,
        "image_token_id": spec.image_token_id,
        "image_tokens_per_image": spec.image_tokens_per_image,
        "export_seconds": round(time.time() - started, 3),
    }
    (tmp / "signature.json").write_text(json.dumps(signature, indent=2) + "\n")
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {
        "format": SIGNATURE_FORMAT,
        "created_at": int(time.time()),
        "files": [{"path": str(p.relative_to(tmp)), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files],
    }
    # Manifest last, then one rename: a reader never sees a half-written export.
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return signature


def run_export(config: ExportConfig) -> int:
    signature = export(config)
    print(json.dumps({"export": "done", "export_seconds": signature.get("export_seconds")}), file=sys.stderr)
    return int(ExitCode.FINISHED)


def main(argv: list[str] | None = None) -> int:
    return config_command(argv, "export a model (optionally with a merged adapter) to ONNX", ExportConfig, run_export)


if __name__ == "__main__":
    sys.exit(main())

"""Precompute the reference model's log-probabilities once, as a cached stage (CONTRACT.md).

    python -m dpo_trainer.reference --config CONFIG.json

The DPO reference is the frozen base model, so its log-probs of each pair's chosen and rejected
completion depend only on (base model, shards, length settings) -- not on the run's beta, loss,
learning rate or seed. Computing them once saves one forward pass per micro-batch in every run
that reuses them (resumes, sweeps, recurring runs), which TRL does too with
`precompute_ref_log_probs=True` (there for text datasets only; here images work the same way,
because the pixels come from the shards' image bytes exactly as in training).

Output, written to a temporary folder and renamed into place:

    output_dir/ref_logps.parquet   sample_id, ref_chosen_logps, ref_rejected_logps (float64 holding
                                   the float32 sums of completion-token log-probs), shard order
    output_dir/manifest.json       written last: files + sha256, samples, dataset_sha256 (sample_id
                                   order), model_config_sha256, dtype, shards (name + sha256)
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import packing
from .checkpoint import MANIFEST, sha256_file
from .cli import config_command
from .config import ReferenceConfig
from .data import PixelCache, PreferenceDataset, collate
from .errors import ExitCode, InvalidInputError
from .events import emit, log
from .modeling import autocast, completion_logps, load_for_scoring

FORMAT = "dpo-reference-logps/1"
FILE = "ref_logps.parquet"
PROGRESS_EVERY_SECONDS = 10.0


def model_config_sha256(model_dir: str) -> str:
    """Identifies the base model cheaply; the Node stage cache keys on the full model fingerprint."""
    return sha256_file(Path(model_dir) / "config.json")


@torch.no_grad()
def compute(config: ReferenceConfig) -> dict:
    if config.padding_free:
        packing.check_family(config.model_dir)
    dataset, loaded, device, dtype = load_for_scoring(config.model_dir, config.shards, config.device, config.dtype)
    model = loaded.model
    if config.padding_free:
        packing.enable(model)
    # Dropout off: the reference is a fixed function (training runs the reference with dropout
    # too when the base model has any; the demo and seed models have none).
    model.eval()
    pixels = PixelCache(loaded.image_processor, loaded.spec.image_token_id) if loaded.image_processor else None
    n = len(dataset)
    chosen = np.empty(n, dtype=np.float64)
    rejected = np.empty(n, dtype=np.float64)
    last_report = time.monotonic()
    for start in range(0, n, config.batch_size):
        end = min(start + config.batch_size, n)
        batch = collate(dataset.rows(range(start, end)), loaded.spec.pad_token_id, pixels).to(device)
        with autocast(device, dtype):
            logps, _ = completion_logps(model, batch, padding_free=config.padding_free)
        logps = logps.float().cpu().numpy()
        chosen[start:end] = logps[: batch.pairs]
        rejected[start:end] = logps[batch.pairs :]
        if time.monotonic() - last_report > PROGRESS_EVERY_SECONDS:
            last_report = time.monotonic()
            emit("reference_progress", samples_done=end, samples=n)
    return write_output(config, dataset, chosen, rejected)


def write_output(config: ReferenceConfig, dataset: PreferenceDataset, chosen: np.ndarray, rejected: np.ndarray) -> dict:
    target = Path(config.output_dir).resolve()
    tmp = target.parent / f".tmp-{target.name}-reference"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    table = pa.table(
        {
            "sample_id": pa.array(dataset.sample_ids, type=pa.string()),
            "ref_chosen_logps": pa.array(chosen, type=pa.float64()),
            "ref_rejected_logps": pa.array(rejected, type=pa.float64()),
        }
    )
    pq.write_table(table, tmp / FILE)
    manifest = {
        "format": FORMAT,
        "created_at": time.time(),
        "samples": len(dataset),
        "dataset_sha256": dataset.fingerprint(),
        "model_config_sha256": model_config_sha256(config.model_dir),
        "dtype": config.dtype,
        "shards": [{"name": Path(p).name, "sha256": sha256_file(Path(p))} for p in dataset.sources],
        "files": [{"path": FILE, "sha256": sha256_file(tmp / FILE), "bytes": (tmp / FILE).stat().st_size}],
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)  # an earlier, possibly incomplete, output of the same config
    tmp.rename(target)
    return {"path": str(target), "files": [FILE], "manifest": MANIFEST, "samples": len(dataset)}


@dataclass
class ReferenceLogps:
    """Precomputed reference log-probs aligned with the dataset's row order."""

    chosen: np.ndarray  # [N] float64
    rejected: np.ndarray

    def for_rows(self, indices: list[int]) -> torch.Tensor:
        """[chosen; rejected] of the given rows, float32 like completion_logps' output."""
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(np.concatenate([self.chosen[idx], self.rejected[idx]])).to(torch.float32)


def load_reference_logps(files: list[str], dataset: PreferenceDataset, model_dir: str, dtype: str) -> ReferenceLogps:
    """Read and verify precomputed files; refuse any that do not cover exactly the shards' samples
    or were computed from another base model."""
    tables = []
    for name in files:
        path = Path(name)
        manifest_path = path.parent / MANIFEST
        if not path.is_file():
            raise InvalidInputError(f"ref_log_probs_files: {path} does not exist")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"ref_log_probs_files: {manifest_path} is missing or not JSON ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise InvalidInputError(f"ref_log_probs_files: {manifest_path} is not a {FORMAT} manifest")
        entry = next((f for f in manifest.get("files", []) if f.get("path") == path.name), None)
        if entry is None or entry.get("sha256") != sha256_file(path):
            raise InvalidInputError(f"ref_log_probs_files: {path} does not match its manifest's sha256 (corrupt or replaced)")
        if manifest.get("model_config_sha256") != model_config_sha256(model_dir):
            raise InvalidInputError(
                f"ref_log_probs_files: {path} was computed for another base model (config.json differs from"
                f" {model_dir}/config.json); recompute the reference stage"
            )
        if manifest.get("dtype") != dtype:
            log(f"reference log-probs in {path} were computed in {manifest.get('dtype')}, training runs in {dtype}")
        try:
            tables.append(pq.read_table(path, columns=["sample_id", "ref_chosen_logps", "ref_rejected_logps"]))
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInputError(f"ref_log_probs_files: {path} is not a readable reference parquet: {exc}") from None
    table = pa.concat_tables(tables)
    ids = table.column("sample_id").to_pylist()
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    if len(position) != len(ids):
        raise InvalidInputError("ref_log_probs_files: a sample_id occurs more than once")
    missing = [s for s in dataset.sample_ids if s not in position]
    extra = set(ids) - set(dataset.sample_ids)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"ref_log_probs_files: no reference log-probs for {len(missing)} sample(s) of the shards, e.g. {missing[0]!r}")
        if extra:
            problems.append(f"ref_log_probs_files: {len(extra)} sample_id(s) not in the shards, e.g. {sorted(extra)[0]!r}")
        raise InvalidInputError(problems + ["the files were computed for other shards; recompute the reference stage"])
    order = np.array([position[s] for s in dataset.sample_ids], dtype=np.int64)
    chosen = table.column("ref_chosen_logps").to_numpy()[order]
    rejected = table.column("ref_rejected_logps").to_numpy()[order]
    if not (np.isfinite(chosen).all() and np.isfinite(rejected).all()):
        raise InvalidInputError("ref_log_probs_files: some reference log-probs are NaN or infinite")
    return ReferenceLogps(chosen, rejected)


def run_reference(config: ReferenceConfig) -> int:
    started = time.monotonic()
    result = compute(config)
    emit("reference_finished", seconds=time.monotonic() - started, **result)
    return ExitCode.FINISHED


def main(argv: list[str] | None = None) -> int:
    return config_command(argv, "precompute reference log-probs", ReferenceConfig, run_reference)


if __name__ == "__main__":
    sys.exit(main())

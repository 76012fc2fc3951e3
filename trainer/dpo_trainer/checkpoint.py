"""Atomic, verifiable checkpoint folders (invariant 3, docs/architecture.md).

A folder is written under a temporary name, every file is fsynced, `manifest.json` (files,
sha256, step) is written last, and only then is the folder renamed into place. A folder without
a manifest is incomplete by definition: readers ignore it and nothing ever resumes from it.

    output_dir/checkpoints/step-00000100/
        adapter/            PEFT adapter (adapter_config.json, adapter_model.safetensors)
        trainer_state.pt    optimizer, scheduler, RNG states, data cursor, step, metrics
        manifest.json       written last
    output_dir/final/
        adapter/
        model/              merge_model: the base with the adapter merged, plus its processor files
        manifest.json
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidInputError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dpo-trainer-checkpoint/1"
STATE_FILE = "trainer_state.pt"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"  # final/model/: the base with the adapter merged in (merge_model)


@dataclass(frozen=True)
class CheckpointRef:
    step: int
    path: Path  # absolute folder
    files: list[str]  # relative paths, manifest excluded


def step_folder_name(step: int) -> str:
    return f"step-{step:08d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_folder(target: Path, step: int, write_contents: Callable[[Path], None]) -> CheckpointRef:
    """Write a folder with `write_contents(tmp)`, add its manifest, then rename it to `target`."""
    target = target.resolve()
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_contents(tmp)
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    entries = []
    for rel in files:
        _fsync(tmp / rel)
        entries.append({"path": rel, "sha256": sha256_file(tmp / rel), "bytes": (tmp / rel).stat().st_size})
    manifest = {"format": MANIFEST_FORMAT, "step": step, "created_at": time.time(), "files": entries}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _fsync(tmp / MANIFEST)
    if target.exists():
        if (target / MANIFEST).is_file() and target.name != "final":
            # Same step written before (e.g. a resumed run re-reaching it): keep what is stored.
            shutil.rmtree(tmp)
            return CheckpointRef(step, target, files)
        # An earlier final adapter is kept beside the new one, never overwritten.
        keep = target.parent / f"{target.name}.previous-{int(time.time())}"
        target.rename(keep)
    os.rename(tmp, target)
    _fsync(target.parent)
    return CheckpointRef(step, target, files)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def verify_folder(folder: Path) -> dict[str, Any]:
    """The manifest of a complete, intact folder; InvalidInputError naming what is wrong otherwise."""
    if not folder.is_dir():
        raise InvalidInputError(f"resume_from: {folder} does not exist")
    manifest = read_manifest(folder)
    if manifest is None:
        raise InvalidInputError(f"resume_from: {folder} has no readable {MANIFEST}; it is incomplete")
    for entry in manifest.get("files", []):
        path = folder / entry["path"]
        if not path.is_file():
            raise InvalidInputError(f"resume_from: {folder} lacks {entry['path']} listed in its manifest")
        if sha256_file(path) != entry["sha256"]:
            raise InvalidInputError(f"resume_from: {folder}/{entry['path']} does not match its sha256; corrupt")
    return manifest


def complete_checkpoints(output_dir: Path) -> list[CheckpointRef]:
    """Complete step checkpoints under output_dir/checkpoints, oldest first."""
    root = output_dir / "checkpoints"
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            if folder.name.startswith("step-") and (manifest := read_manifest(folder)) is not None:
                files = [e["path"] for e in manifest.get("files", [])]
                found.append(CheckpointRef(int(manifest["step"]), folder.resolve(), files))
    return sorted(found, key=lambda ref: ref.step)


def remove_stale_temporaries(output_dir: Path) -> None:
    """Folders a killed run left half-written; never complete, so never useful."""
    for parent in (output_dir / "checkpoints", output_dir):
        if parent.is_dir():
            for folder in parent.glob(".tmp-*"):
                shutil.rmtree(folder, ignore_errors=True)


def save_checkpoint(
    output_dir: Path, step: int, model: Any, trainer_state: dict[str, Any], weights: dict[str, Any] | None = None
) -> CheckpointRef:
    """`weights`: the model's trainable state gathered from its shards (fsdp.py); None: the model's own."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / ADAPTER_DIR, state_dict=weights)
        torch.save(trainer_state, tmp / STATE_FILE)

    return write_atomic_folder(output_dir / "checkpoints" / step_folder_name(step), step, write)


def save_final_adapter(
    output_dir: Path, step: int, model: Any, also: Callable[[Path], None] | None = None,
    weights: dict[str, Any] | None = None,
) -> CheckpointRef:
    """final/adapter/, and with `also` whatever it writes into final/model/ (the merged model).
    `weights` as in save_checkpoint."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / ADAPTER_DIR, state_dict=weights)
        if also is not None:
            also(tmp / MODEL_DIR)

    return write_atomic_folder(output_dir / "final", step, write)


def load_trainer_state(folder: Path) -> dict[str, Any]:
    # weights_only: the state holds only tensors and plain Python values (see train.py), so a
    # checkpoint cannot execute code when loaded.
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)

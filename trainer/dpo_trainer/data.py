"""Token shards -> padded DPO batches, and the seeded data order that makes resume exact.

Shards are the parquet files the Node `shard` stage writes (CONTRACT.md): the prompt already
rendered with the chat template and its <image> placeholder expanded, chosen/rejected tokenized
with eos appended, and the thumbnailed image bytes. The rows stay in Arrow memory (memory-mapped)
and are turned into Python objects only for the pairs of the current micro-batch.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from .errors import InvalidInputError

TOKEN_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
REQUIRED_COLUMNS = ("sample_id", *TOKEN_COLUMNS, "image")


@dataclass(frozen=True)
class ModelInputSpec:
    """What the loaded model accepts, for validating shards against it."""

    vocab_size: int
    pad_token_id: int
    has_vision: bool
    image_token_id: int | None
    image_tokens_per_image: int | None


class PreferenceDataset:
    """All preference pairs of the given shards, in shard order."""

    def __init__(self, table: pa.Table, sources: list[str]):
        self.table = table
        self.sources = sources
        self.sample_ids: list[str] = table.column("sample_id").to_pylist()

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def has_images(self) -> bool:
        return self.table.column("image").null_count < len(self)

    def fingerprint(self) -> str:
        """Identifies the dataset and its row order; a resumed run must see the same one."""
        digest = hashlib.sha256()
        for sample_id in self.sample_ids:
            digest.update(sample_id.encode("utf-8") + b"\0")
        return digest.hexdigest()

    def max_sequence_length(self) -> int:
        """Longest prompt + answer row, in tokens (what one forward pass may have to hold)."""
        lengths = [pc.list_value_length(self.table.column(c)).to_numpy(zero_copy_only=False) for c in TOKEN_COLUMNS]
        return int((lengths[0] + np.maximum(lengths[1], lengths[2])).max())

    def rows(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return self.table.take(pa.array(indices, type=pa.int64())).to_pylist()


def load_shards(paths: Sequence[str]) -> PreferenceDataset:
    """Read and structurally validate the shards; every problem names its file (and row)."""
    tables: list[pa.Table] = []
    for path in paths:
        if not Path(path).is_file():
            raise InvalidInputError(f"shard {path} does not exist")
        try:
            table = pq.read_table(path, memory_map=True)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInputError(f"shard {path} is not a readable parquet file: {exc}") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise InvalidInputError(
                f"shard {path} lacks column(s) {', '.join(missing)} (has {', '.join(table.column_names)})"
            )
        table = table.select(list(REQUIRED_COLUMNS))
        problems = _column_type_problems(table, path)
        if problems:
            raise InvalidInputError(problems)
        # One schema for concatenation: int32 token lists, large binary for the images.
        table = table.cast(
            pa.schema(
                [
                    ("sample_id", pa.string()),
                    *[(c, pa.list_(pa.int32())) for c in TOKEN_COLUMNS],
                    ("image", pa.binary()),
                ]
            )
        )
        for column in TOKEN_COLUMNS:
            lengths = pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False)
            empty = np.flatnonzero(np.nan_to_num(lengths.astype(float), nan=0) == 0)
            if len(empty):
                row = int(empty[0])
                raise InvalidInputError(
                    f"shard {path} row {row} (sample_id {table.column('sample_id')[row].as_py()!r}):"
                    f" {column} is empty or null"
                )
        if table.column("sample_id").null_count:
            raise InvalidInputError(f"shard {path}: sample_id is null in some rows")
        tables.append(table)
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise InvalidInputError(f"shards {', '.join(paths)} hold no rows")
    dataset = PreferenceDataset(table, list(paths))
    if len(set(dataset.sample_ids)) != len(dataset):
        raise InvalidInputError("sample_id values are not unique across the shards")
    return dataset


def _column_type_problems(table: pa.Table, path: str) -> list[str]:
    problems = []
    schema = table.schema
    id_type = schema.field("sample_id").type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
        problems.append(f"shard {path}: column sample_id must be string, is {id_type}")
    for column in TOKEN_COLUMNS:
        tp = schema.field(column).type
        if not (pa.types.is_list(tp) or pa.types.is_large_list(tp)) or not pa.types.is_integer(tp.value_type):
            problems.append(f"shard {path}: column {column} must be list<int32>, is {tp}")
    image_type = schema.field("image").type
    if not any(check(image_type) for check in (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_null)):
        problems.append(f"shard {path}: column image must be binary or null, is {image_type}")
    return problems


def validate_against_model(dataset: PreferenceDataset, spec: ModelInputSpec) -> None:
    """Token ids in range and <image> placeholders matching the model, checked before step 1."""
    table = dataset.table
    problems: list[str] = []
    for column in TOKEN_COLUMNS:
        values = pc.list_flatten(table.column(column)).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero((values < 0) | (values >= spec.vocab_size))
        if len(bad):
            problems.append(
                f"{column}: token id {int(values[bad[0]])} is outside the model's vocabulary"
                f" (size {spec.vocab_size}); the shards were tokenized for another model"
            )
    has_image = table.column("image").is_valid().to_numpy(zero_copy_only=False)
    if has_image.any() and not spec.has_vision:
        row = int(np.flatnonzero(has_image)[0])
        problems.append(
            f"sample {dataset.sample_ids[row]!r} has an image but the model in model_dir has no vision"
            " tower; use a vision-language model or text-only shards"
        )
    elif spec.has_vision and spec.image_token_id is not None:
        prompts = table.column("prompt_input_ids").combine_chunks()
        flat = prompts.flatten().to_numpy(zero_copy_only=False)
        offsets = prompts.offsets.to_numpy(zero_copy_only=False)
        offsets = offsets - offsets[0]  # flatten() starts at the first offset of a sliced array
        is_image = np.concatenate([[0], np.cumsum(flat == spec.image_token_id)])
        counts = is_image[offsets[1:]] - is_image[offsets[:-1]]
        if spec.image_tokens_per_image is None:
            # Image splitting (Idefics2) makes the count vary: only placeholders vs no placeholders.
            wrong = np.flatnonzero((counts > 0) != has_image)
            expects = lambda row: "at least one" if has_image[row] else "0"  # noqa: E731
        else:
            wrong = np.flatnonzero(counts != np.where(has_image, spec.image_tokens_per_image, 0))
            expects = lambda row: str(spec.image_tokens_per_image if has_image[row] else 0)  # noqa: E731
        if len(wrong):
            row = int(wrong[0])
            problems.append(
                f"sample {dataset.sample_ids[row]!r}: prompt has {int(counts[row])} <image> tokens, the model"
                f" expects {expects(row)} ({'one image' if has_image[row] else 'no image'});"
                " re-run the tokenize stage for this model"
            )
    if problems:
        raise InvalidInputError(problems)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of one epoch: depends on (seed, epoch) only, never on RNG state."""
    return np.random.default_rng(seed + epoch).permutation(n)


@dataclass
class DataCursor:
    """Where training is in the data: `offset` samples of epoch `epoch` are consumed."""

    epoch: int = 0
    offset: int = 0

    def next_step(self, seed: int, n: int, step_samples: int) -> tuple[list[int], "DataCursor"]:
        """Sample indices of the next optimizer step and the cursor after it.

        Steps never straddle epochs: the last step of an epoch may be smaller, exactly as a
        DataLoader with drop_last=False.
        """
        order = epoch_permutation(seed, self.epoch, n)
        end = min(self.offset + step_samples, n)
        indices = order[self.offset : end].tolist()
        after = DataCursor(self.epoch + 1, 0) if end == n else DataCursor(self.epoch, end)
        return indices, after

    def epoch_progress(self, n: int) -> float:
        return self.epoch + self.offset / n


def steps_until_epoch(cursor: DataCursor, n: int, step_samples: int, epochs: int) -> int:
    """Optimizer steps from `cursor` to the end of epoch `epochs`."""
    steps = 0
    epoch, offset = cursor.epoch, cursor.offset
    while epoch < epochs:
        steps += -(-(n - offset) // step_samples)
        epoch, offset = epoch + 1, 0
    return steps


@dataclass
class PreferenceBatch:
    """Chosen rows first, then rejected rows, right-padded: one forward pass for both."""

    input_ids: torch.Tensor  # [2B, T]
    attention_mask: torch.Tensor  # [2B, T]
    completion_mask: torch.Tensor  # [2B, T], 1 on chosen/rejected tokens (what the loss scores)
    pixel_values: torch.Tensor | None  # [images, C, H, W] in row order, or None
    pairs: int
    tokens: int  # non-padding tokens, for tokens/second

    def to(self, device: torch.device) -> "PreferenceBatch":
        return PreferenceBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.completion_mask.to(device),
            None if self.pixel_values is None else self.pixel_values.to(device),
            self.pairs,
            self.tokens,
        )


class PixelCache:
    """Image bytes -> pixel_values, memoised up to a byte budget (epochs revisit every image)."""

    def __init__(self, image_processor: Any, budget_bytes: int = 256 * 2**20):
        self.image_processor = image_processor
        self.budget = budget_bytes
        self.used = 0
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, sample_id: str, image_bytes: bytes) -> torch.Tensor:
        if sample_id in self.entries:
            self.entries.move_to_end(sample_id)
            return self.entries[sample_id]
        try:
            image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        except Exception as exc:  # PIL raises many types for bad bytes
            raise InvalidInputError(f"sample {sample_id!r}: image bytes cannot be decoded ({exc})") from None
        pixels = self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        size = pixels.numel() * pixels.element_size()
        if size <= self.budget:
            self.entries[sample_id] = pixels
            self.used += size
            while self.used > self.budget:
                _, evicted = self.entries.popitem(last=False)
                self.used -= evicted.numel() * evicted.element_size()
        return pixels


def collate(rows: list[dict[str, Any]], pad_token_id: int, pixels: PixelCache | None) -> PreferenceBatch:
    """Build [prompt + chosen; prompt + rejected] sequences and their completion masks."""
    sequences: list[list[int]] = []
    completion_starts: list[int] = []
    for column in ("chosen_input_ids", "rejected_input_ids"):
        for row in rows:
            sequences.append(row["prompt_input_ids"] + row[column])
            completion_starts.append(len(row["prompt_input_ids"]))
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (sequence, start) in enumerate(zip(sequences, completion_starts)):
        input_ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[i, : len(sequence)] = 1
        completion_mask[i, start : len(sequence)] = 1
    pixel_values = None
    with_image = [row for row in rows if row["image"] is not None]
    if with_image:
        if pixels is None:
            raise InvalidInputError("the shards hold images but the model has no image processor")
        images = [pixels.get(row["sample_id"], row["image"]) for row in with_image]
        # Image features are scattered into <image> tokens in row order: chosen rows, then rejected.
        pixel_values = torch.stack(images + images)
    return PreferenceBatch(
        input_ids, attention_mask, completion_mask, pixel_values, len(rows), int(attention_mask.sum())
    )

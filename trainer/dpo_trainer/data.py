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
from collections.abc import Callable, Sequence
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
# A row's images after the first, in placeholder order; optional (shards of one-image rows written
# before it existed lack it, which reads as no extra images).
EXTRA_IMAGES = "extra_images"
# The families that take several images per prompt, for errors (modeling.py decides which).
MULTI_IMAGE_FAMILIES = "Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA, LLaVA-NeXT and Gemma 3"


@dataclass(frozen=True)
class ModelInputSpec:
    """What the loaded model accepts, for validating shards against it."""

    vocab_size: int
    pad_token_id: int
    has_vision: bool
    image_token_id: int | None
    image_tokens_per_image: int | None
    # (height, width) -> image tokens, for processors whose count depends on the image's size
    # (Qwen2-VL, LLaVA-NeXT); None where the count is fixed or unknown.
    image_tokens_for_size: Callable[[int, int], int] | None = None
    # Whether a prompt may hold several images: the flat layout (Qwen2-VL), where every image's
    # patches are concatenated with one grid each, and the stacked one (LLaVA, LLaVA-NeXT, Gemma 3),
    # where images are stacked in placeholder order, are the ones the collator builds for them.
    multi_image: bool = False


def with_extra_images(table: pa.Table) -> pa.Table:
    """The table with an `extra_images` column: empty lists where it has none (one image a row)."""
    if EXTRA_IMAGES in table.column_names:
        return table
    return table.append_column(EXTRA_IMAGES, pa.array([[]] * table.num_rows, type=pa.list_(pa.binary())))


class PreferenceDataset:
    """All preference pairs of the given shards, in shard order."""

    def __init__(self, table: pa.Table, sources: list[str]):
        self.table = with_extra_images(table)
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

    def image_counts(self) -> np.ndarray:
        """Images per row: `image` (or none) plus `extra_images`."""
        first = self.table.column("image").is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
        extra = pc.list_value_length(self.table.column(EXTRA_IMAGES)).to_numpy(zero_copy_only=False)
        return first + np.nan_to_num(extra.astype(float), nan=0).astype(np.int64)


def row_images(row: dict[str, Any]) -> list[bytes]:
    """A row's encoded images in placeholder order."""
    if row["image"] is None:
        return []
    return [row["image"], *(row.get(EXTRA_IMAGES) or [])]


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
        table = with_extra_images(table).select([*REQUIRED_COLUMNS, EXTRA_IMAGES])
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
                    (EXTRA_IMAGES, pa.list_(pa.binary())),
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
    extra_type = schema.field(EXTRA_IMAGES).type
    if not (
        (pa.types.is_list(extra_type) or pa.types.is_large_list(extra_type))
        and (pa.types.is_binary(extra_type.value_type) or pa.types.is_large_binary(extra_type.value_type) or pa.types.is_null(extra_type.value_type))
    ):
        problems.append(f"shard {path}: column {EXTRA_IMAGES} must be list<binary>, is {extra_type}")
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
    image_counts = dataset.image_counts()
    several = np.flatnonzero(image_counts > 1)
    if spec.has_vision and len(several) and not spec.multi_image:
        row = int(several[0])
        problems.append(
            f"sample {dataset.sample_ids[row]!r} has {int(image_counts[row])} images, but this model family takes one"
            f" image per prompt here (several: {MULTI_IMAGE_FAMILIES}); re-run the format stage for this model"
        )
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
        if spec.image_tokens_for_size is not None:
            # The count follows from the image's size (a header read, no decoding).
            expected_counts = np.array(
                [_size_tokens(table, row, spec.image_tokens_for_size) if has_image[row] else 0 for row in range(len(counts))]
            )
            wrong = np.flatnonzero(counts != expected_counts)
            expects = lambda row: f"{expected_counts[row]} for its {_images_phrase(int(image_counts[row]), 'image')}"  # noqa: E731
        elif spec.image_tokens_per_image is None:
            # Image splitting (Idefics2) makes the count vary: only placeholders vs no placeholders.
            wrong = np.flatnonzero((counts > 0) != has_image)
            expects = lambda row: "at least one" if has_image[row] else "0"  # noqa: E731
        else:
            wrong = np.flatnonzero(counts != image_counts * spec.image_tokens_per_image)
            expects = lambda row: str(int(image_counts[row]) * spec.image_tokens_per_image)  # noqa: E731
        if len(wrong):
            row = int(wrong[0])
            problems.append(
                f"sample {dataset.sample_ids[row]!r}: prompt has {int(counts[row])} <image> tokens, the model"
                f" expects {expects(row)} ({_images_phrase(int(image_counts[row]), 'one image')});"
                " re-run the tokenize stage for this model"
            )
    if problems:
        raise InvalidInputError(problems)


def _images_phrase(count: int, one: str) -> str:
    """"no image", `one` ("image" / "one image"), or "N images"."""
    return "no image" if count == 0 else one if count == 1 else f"{count} images"


def _size_tokens(table: pa.Table, row: int, tokens_for_size: Callable[[int, int], int]) -> int:
    """Image tokens the processor makes of this row's images, from their headers; -1 for an
    image that cannot be read or that the processor refuses (reported as a mismatch)."""
    images = [table.column("image")[row].as_py(), *(table.column(EXTRA_IMAGES)[row].as_py() or [])]
    try:
        total = 0
        for image in images:
            width, height = Image.open(io.BytesIO(image)).size
            total += tokens_for_size(height, width)
        return total
    except Exception:  # PIL raises many types for bad bytes; the processor ValueError
        return -1


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
    """Chosen rows first, then rejected rows, right-padded: one forward pass for both (chosen rows
    alone in a supervised fine-tuning batch)."""

    input_ids: torch.Tensor  # [2B, T]
    attention_mask: torch.Tensor  # [2B, T]
    completion_mask: torch.Tensor  # [2B, T], 1 on chosen/rejected tokens (what the loss scores)
    # [images, C, H, W] in row order, or (Qwen2-VL's flat layout) [patches of all images, C*t*p*p];
    # None without images.
    pixel_values: torch.Tensor | None
    pairs: int
    tokens: int  # non-padding tokens, for tokens/second
    # [images, 3] (t, h, w patches per image) for flat-layout processors (Qwen2-VL), else None.
    image_grid_thw: torch.Tensor | None = None
    # [2B, T], 1 on image tokens (Qwen2-VL's processor output of that name): transformers 5
    # computes M-RoPE position ids from it, and without it silently falls back to 1-D positions.
    mm_token_type_ids: torch.Tensor | None = None
    # [2B, T], 1 on image soft tokens (Gemma 3's processor output of that name): the model lets
    # each image's tokens attend to each other bidirectionally from it; without it, causally.
    token_type_ids: torch.Tensor | None = None
    # [images, 2], each image's (height, width) for anyres processors (LLaVA-NeXT), whose
    # pixel_values are [images, tiles, C, H, W] with missing tiles zero: the model takes the
    # tile count and the letterbox to remove from it.
    image_sizes: torch.Tensor | None = None

    def to(self, device: torch.device) -> "PreferenceBatch":
        return PreferenceBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.completion_mask.to(device),
            None if self.pixel_values is None else self.pixel_values.to(device),
            self.pairs,
            self.tokens,
            None if self.image_grid_thw is None else self.image_grid_thw.to(device),
            None if self.mm_token_type_ids is None else self.mm_token_type_ids.to(device),
            None if self.token_type_ids is None else self.token_type_ids.to(device),
            None if self.image_sizes is None else self.image_sizes.to(device),
        )


@dataclass(frozen=True)
class ImageFeatures:
    """One image as the image processor returns it."""

    pixel_values: torch.Tensor  # [C, H, W], [patches, C*t*p*p] in the flat layout, [tiles, C, H, W] anyres
    grid_thw: torch.Tensor | None  # [3] in the flat layout (Qwen2-VL), else None
    size: tuple[int, int] | None = None  # (height, width) of the image, for anyres (LLaVA-NeXT)

    @property
    def nbytes(self) -> int:
        return self.pixel_values.numel() * self.pixel_values.element_size()


class PixelCache:
    """Image bytes -> pixel_values, memoised up to a byte budget (epochs revisit every image).

    Two layouts: fixed-size processors (CLIP, SigLIP, Idefics2) return [1, C, H, W] per image;
    Qwen2-VL's returns the image's patches flattened, [patches, C*t*p*p], with image_grid_thw
    giving their (t, h, w) grid -- which the model needs too, and which fixes how many
    `image_token_id` tokens the prompt must hold (t*h*w / merge_size^2)."""

    def __init__(self, image_processor: Any, image_token_id: int | None = None, budget_bytes: int = 256 * 2**20):
        self.image_processor = image_processor
        self.image_token_id = image_token_id
        self.budget = budget_bytes
        self.used = 0
        self.entries: OrderedDict[str, ImageFeatures] = OrderedDict()

    def get(self, sample_id: str, image_bytes: bytes) -> ImageFeatures:
        if sample_id in self.entries:
            self.entries.move_to_end(sample_id)
            return self.entries[sample_id]
        try:
            image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        except Exception as exc:  # PIL raises many types for bad bytes
            raise InvalidInputError(f"sample {sample_id!r}: image bytes cannot be decoded ({exc})") from None
        try:
            out = self.image_processor(images=[image], return_tensors="pt")
        except ValueError as exc:  # e.g. Qwen2-VL's aspect ratio limit
            raise InvalidInputError(f"sample {sample_id!r}: the image processor refuses the image ({exc})") from None
        if "image_grid_thw" in out:
            features = ImageFeatures(out["pixel_values"], out["image_grid_thw"][0])
        elif "image_sizes" in out:
            height, width = (int(v) for v in out["image_sizes"][0])
            features = ImageFeatures(out["pixel_values"][0], None, (height, width))
        else:
            features = ImageFeatures(out["pixel_values"][0], None)
        if features.nbytes <= self.budget:
            self.entries[sample_id] = features
            self.used += features.nbytes
            while self.used > self.budget:
                _, evicted = self.entries.popitem(last=False)
                self.used -= evicted.nbytes
        return features

    def image_tokens(self, features: ImageFeatures) -> int | None:
        """Image tokens the prompt must hold for this image, where the image decides it."""
        if features.grid_thw is None:
            return None
        return int(features.grid_thw.prod()) // int(getattr(self.image_processor, "merge_size", 1)) ** 2


# Image processors of families whose processor returns token_type_ids (1 on each image's soft
# tokens) and whose model reads them: Gemma 3 builds its bidirectional image attention from them.
# (PaliGemma's token_type_ids mean prefix/suffix instead, so the name alone does not decide.)
TOKEN_TYPE_IMAGE_PROCESSORS = ("Gemma3ImageProcessorPil", "Gemma3ImageProcessor", "Gemma3ImageProcessorFast")


def marks_image_tokens(image_processor: Any) -> bool:
    return type(image_processor).__name__ in TOKEN_TYPE_IMAGE_PROCESSORS


def collate(
    rows: list[dict[str, Any]], pad_token_id: int, pixels: PixelCache | None, *, chosen_only: bool = False
) -> PreferenceBatch:
    """Build [prompt + chosen; prompt + rejected] sequences and their completion masks; with
    `chosen_only` (supervised fine-tuning), the prompt + chosen rows alone."""
    sequences: list[list[int]] = []
    completion_starts: list[int] = []
    columns = ("chosen_input_ids",) if chosen_only else ("chosen_input_ids", "rejected_input_ids")
    for column in columns:
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
    image_grid_thw = None
    mm_token_type_ids = None
    token_type_ids = None
    image_sizes = None
    with_image = [row for row in rows if row["image"] is not None]
    if with_image:
        if pixels is None:
            raise InvalidInputError("the shards hold images but the model has no image processor")
        # A row's images under their own cache keys (the first keeps the sample id, as before).
        per_row = [
            [pixels.get(row["sample_id"] if k == 0 else f"{row['sample_id']}#{k}", image) for k, image in enumerate(row_images(row))]
            for row in with_image
        ]
        images = [f for row_features in per_row for f in row_features]
        # Image features are scattered into <image> tokens in row order: chosen rows, then rejected.
        images_in_order = images * len(columns)
        if images[0].grid_thw is None:
            several = next((row for row, fs in zip(with_image, per_row) if len(fs) > 1), None)
            # [C, H, W] per image stacks in placeholder order, as do anyres tiles; a processor
            # returning several frames per image (Idefics2's split) has a per-row layout instead.
            if several is not None and images[0].pixel_values.dim() != 3 and images[0].size is None:
                raise InvalidInputError(
                    f"sample {several['sample_id']!r} has several images; the image processor"
                    f" {type(pixels.image_processor).__name__} takes one per prompt here (several: {MULTI_IMAGE_FAMILIES})"
                )
            if images[0].size is not None:
                # Anyres: tiles padded to the batch's most (the model reads each image's own count
                # from image_sizes and drops the rest).
                tiles = max(f.pixel_values.shape[0] for f in images)
                pixel_values = torch.stack([_pad_tiles(f.pixel_values, tiles) for f in images_in_order])
                image_sizes = torch.tensor([f.size for f in images_in_order], dtype=torch.long)
            else:
                pixel_values = torch.stack([f.pixel_values for f in images_in_order])
            if pixels.image_token_id is not None and marks_image_tokens(pixels.image_processor):
                token_type_ids = (input_ids == pixels.image_token_id).long()
        else:
            _check_image_tokens(with_image, per_row, pixels)
            pixel_values = torch.cat([f.pixel_values for f in images_in_order])
            image_grid_thw = torch.stack([f.grid_thw for f in images_in_order])
            if pixels.image_token_id is not None:
                mm_token_type_ids = (input_ids == pixels.image_token_id).long()
    return PreferenceBatch(
        input_ids, attention_mask, completion_mask, pixel_values, len(rows), int(attention_mask.sum()), image_grid_thw,
        mm_token_type_ids, token_type_ids, image_sizes,
    )


def _pad_tiles(pixel_values: torch.Tensor, tiles: int) -> torch.Tensor:
    missing = tiles - pixel_values.shape[0]
    return pixel_values if missing == 0 else torch.cat([pixel_values, pixel_values.new_zeros((missing, *pixel_values.shape[1:]))])


def _check_image_tokens(rows: list[dict[str, Any]], images: list[list[ImageFeatures]], pixels: PixelCache) -> None:
    """The prompt's image tokens must be what the processor makes of its images (the model would
    fail on a mismatch mid-step; this names the sample)."""
    if pixels.image_token_id is None:
        return
    for row, features in zip(rows, images):
        counts = [pixels.image_tokens(f) for f in features]
        expected = None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]
        found = sum(1 for t in row["prompt_input_ids"] if t == pixels.image_token_id)
        if expected is not None and found != expected:
            grid = ", ".join("x".join(str(int(v)) for v in f.grid_thw) for f in features)  # type: ignore[union-attr]
            raise InvalidInputError(
                f"sample {row['sample_id']!r}: prompt has {found} image tokens, the processor makes {expected} of"
                f" its image(s) (grid {grid}); re-run the tokenize stage for this model and its processor settings"
            )

"""Shards checked against the model before step 1: image placeholders per model family."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dpo_trainer.data import ModelInputSpec, PreferenceDataset, validate_against_model
from dpo_trainer.errors import InvalidInputError

IMAGE = 7


def dataset(prompts: list[list[int]], images: list[bytes | None]) -> PreferenceDataset:
    n = len(prompts)
    table = pa.table(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "prompt_input_ids": pa.array(prompts, pa.list_(pa.int32())),
            "chosen_input_ids": pa.array([[3, 2]] * n, pa.list_(pa.int32())),
            "rejected_input_ids": pa.array([[4, 2]] * n, pa.list_(pa.int32())),
            "image": pa.array(images, pa.binary()),
        }
    )
    return PreferenceDataset(table, ["mem"])


def spec(per_image: int | None) -> ModelInputSpec:
    return ModelInputSpec(vocab_size=32, pad_token_id=0, has_vision=True, image_token_id=IMAGE, image_tokens_per_image=per_image)


def test_fixed_count_models_need_exactly_that_many_placeholders() -> None:
    validate_against_model(dataset([[1, IMAGE, IMAGE, 5]], [b"jpg"]), spec(2))
    with pytest.raises(InvalidInputError, match="prompt has 1 <image> tokens, the model expects 2"):
        validate_against_model(dataset([[1, IMAGE, 5]], [b"jpg"]), spec(2))


def test_variable_count_models_accept_any_positive_count() -> None:
    # Idefics2 with image splitting: 5 crops x 64 tokens for one image, 64 for another.
    validate_against_model(dataset([[1] + [IMAGE] * 320 + [5], [1] + [IMAGE] * 64, [1, 5]], [b"a", b"b", None]), spec(None))
    with pytest.raises(InvalidInputError, match="sample 's0': prompt has 0 <image> tokens, the model expects at least one"):
        validate_against_model(dataset([[1, 5]], [b"jpg"]), spec(None))
    with pytest.raises(InvalidInputError, match="expects 0 \\(no image\\)"):
        validate_against_model(dataset([[1, IMAGE, 5]], [None]), spec(None))

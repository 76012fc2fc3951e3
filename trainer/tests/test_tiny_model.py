"""The demo model folder: loads like a hub checkpoint, renders the contract's chat template, and
tokenizes the same way in Python (processor) and Node (@huggingface/jinja + tokenizers)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from demo_data import PairTokenizer

TESTS = Path(__file__).resolve().parent
NODE_MODULES = TESTS.parents[1] / "node_modules"

USER_TURN = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}]
ASSISTANT_TURN = [{"role": "assistant", "content": [{"type": "text", "text": "The circle is red."}]}]


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def test_loads_with_auto_classes(tiny_model_dir, processor):
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration, LlavaProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert isinstance(model, LlavaForConditionalGeneration)
    assert isinstance(processor, LlavaProcessor)
    tokens = processor._get_num_multimodal_tokens(image_sizes=[(48, 48)])["num_image_tokens"][0]
    assert 16 <= tokens <= 36 and model.config.image_seq_length == tokens
    tokenizer = processor.tokenizer
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert 256 < len(tokenizer) <= 512


def test_chat_template_is_stored_in_both_places(tiny_model_dir):
    from dpo_trainer.build_tiny_model import CHAT_TEMPLATE

    assert json.loads((tiny_model_dir / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    assert (tiny_model_dir / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert (tiny_model_dir / "preprocessor_config.json").is_file()


def test_chat_template_renders_contract_strings(processor):
    tokenizer = processor.tokenizer
    assert tokenizer.apply_chat_template(USER_TURN, tokenize=False) == "USER: <image>\nWhat color is the circle? "
    assert tokenizer.apply_chat_template(ASSISTANT_TURN, tokenize=False) == "ASSISTANT: The circle is red."
    assert processor.apply_chat_template(USER_TURN, tokenize=False) == "USER: <image>\nWhat color is the circle? "
    generation = tokenizer.apply_chat_template(USER_TURN, tokenize=False, add_generation_prompt=True)
    assert generation == "USER: <image>\nWhat color is the circle? ASSISTANT:"


def test_demo_words_are_single_tokens(processor):
    tokenizer = processor.tokenizer
    for word in ("circle", "square", "triangle", "red", "green", "blue", "yellow", "purple", "orange",
                 "one", "two", "three", "left", "center", "right"):
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


def test_shard_convention_matches_the_processor(tiny_model_dir, processor):
    """prompt_input_ids (bos + template, <image> expanded) == what LlavaProcessor produces."""
    pair_tokenizer = PairTokenizer(tiny_model_dir)
    image = Image.new("RGB", (48, 48), (200, 200, 200))
    text = processor.apply_chat_template(USER_TURN, tokenize=False)
    expected = processor(text=text, images=image, return_tensors="pt")["input_ids"][0].tolist()
    assert pair_tokenizer.prompt_ids("What color is the circle?") == expected
    chosen = pair_tokenizer.answer_ids("The circle is red.")
    assert chosen[-1] == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(chosen) == "ASSISTANT: The circle is red.</s>"


def test_build_is_deterministic(tiny_model_dir, tmp_path):
    from dpo_trainer.build_tiny_model import write_tiny_llava

    again = write_tiny_llava(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
        assert digest(again / name) == digest(tiny_model_dir / name), name


@pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_MODULES / "@huggingface" / "tokenizers").is_dir()
    or not (NODE_MODULES / "@huggingface" / "jinja").is_dir(),
    reason="needs node and the repo's node_modules (@huggingface/jinja, @huggingface/tokenizers)",
)
def test_node_renders_and_tokenizes_identically(tiny_model_dir, processor):
    cases = [USER_TURN, ASSISTANT_TURN,
             [{"role": "user", "content": [{"type": "image"},
                                           {"type": "text", "text": "How many shapes are in the image?"}]}],
             [{"role": "assistant", "content": [{"type": "text", "text": "The triangle is on the center."}]}]]
    node = subprocess.run(
        ["node", str(TESTS / "node_tokenize.mjs"), str(tiny_model_dir)],
        input=json.dumps(cases), capture_output=True, text=True, check=True, timeout=60,
    )
    tokenizer = processor.tokenizer
    for case, result in zip(cases, json.loads(node.stdout)):
        text = tokenizer.apply_chat_template(case, tokenize=False)
        assert result["text"] == text
        assert result["ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_demo_images_are_thumbnailed(demo_shards):
    import pyarrow.parquet as pq

    table = pq.read_table(demo_shards[0][0])
    image = Image.open(io.BytesIO(table.column("image")[0].as_py()))
    assert image.format == "JPEG" and max(image.size) == 48

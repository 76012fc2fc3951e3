"""Build the demo model: a tiny random-init LLaVA saved exactly like a hub checkpoint.

    python -m dpo_trainer.build_tiny_model --arch llava --out DIR [--seed 0]
    python -m dpo_trainer.build_tiny_model --arch qwen2_5_vl --out DIR [--seed 0]
    python -m dpo_trainer.build_tiny_model --arch qwen3_vl --out DIR [--seed 0]
    python -m dpo_trainer.build_tiny_model --arch gemma3 --out DIR [--seed 0]
    python -m dpo_trainer.build_tiny_model --arch llava_next --out DIR [--seed 0]

`--arch qwen2_5_vl` builds a tiny Qwen2.5-VL instead (Qwen2_5_VLForConditionalGeneration, its
windowed vision tower and patch merger, M-RoPE, a Qwen2-style byte-level tokenizer with the
family's special tokens and Qwen2.5-VL-Instruct's chat template, and a Qwen2_5_VLProcessor
without its torchvision-only video processor; see vision_processors.py); `--arch qwen3_vl` the
same for Qwen3-VL (Qwen3VLForConditionalGeneration, Qwen3-VL-Instruct's template). `--arch gemma3` builds
a tiny Gemma 3 (Gemma3ForConditionalGeneration: SigLIP tower, pooled soft tokens, sliding and
global attention layers), a Gemma-style tokenizer with the family's image tokens, Gemma 3's chat
template and Gemma3Processor.

The machine has no hub access, so tests and the demo pipeline train a real transformers
architecture (CLIP vision tower + Llama language model + LLaVA projector) at toy size. Everything
goes through `save_pretrained`, so the folder loads with `AutoProcessor` +
`AutoModelForImageTextToText` like `llava-hf/llava-1.5-7b-hf` would, and the Node side reads the
same tokenizer.json / tokenizer_config.json / chat_template.jinja it would read for a real model.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

# The LLaVA-1.5 conversation format the demo uses (see CONTRACT.md):
#   user turn      -> "USER: <image>\n{question} "
#   assistant turn -> "ASSISTANT: {answer}"
# Written with `{{ '...' }}` string literals for the newline so that trim_blocks/lstrip_blocks
# (both on in transformers and in @huggingface/jinja) cannot eat it, and with no filters beyond
# what @huggingface/jinja implements.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}"
    "{% else %}{{ message['role'] | upper + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] != 'assistant' %}{{ ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Token ids 0..4, in this order; Llama's convention puts <unk> first.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# Words of the demo task (activities/ on the Node side renders the same scenes and sentences).
SHAPES = ["circle", "square", "triangle"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
COUNT_WORDS = ["one", "two", "three"]
COLUMNS = ["left", "center", "right"]
# The demo story's words (datagen/demoStory.ts and datagen/amber.ts on the Node side).
NEVER_DRAWN = ["dog", "car", "cat", "tree", "person"]
STORY_COUNT_WORDS = ["one", "two", "three", "four"]

# Filler text so that the BPE also has merges for ordinary English, not only the demo sentences.
GENERAL_TEXT = """\
Describe the image. The picture shows a simple scene with a few objects on a plain background.
Is there a dog in the image? No, there is no dog. Yes, there is a cat next to the table.
What is the person holding? The person is holding a cup of coffee and a small book.
The sky is clear and the grass is green. A car is parked near the old house by the river.
Answer the question with a short sentence. Please be precise and do not make things up.
"""


def demo_corpus() -> list[str]:
    """Every sentence the demo task can produce, plus filler, as the BPE training corpus."""
    lines: list[str] = []
    for shape in SHAPES:
        lines.append(f"USER: What color is the {shape}? ASSISTANT: ")
        lines.append(f"USER: Where is the {shape}? ASSISTANT: ")
        for colour in COLOURS:
            lines.append(f"The {shape} is {colour}.")
        for column in COLUMNS:
            lines.append(f"The {shape} is on the {column}.")
    for word in COUNT_WORDS:
        lines.append(f"USER: How many shapes are in the image? ASSISTANT: I count {word}.")
    lines.extend(story_corpus())
    # Repeating the task sentences makes their words win the merges, so every shape, colour,
    # number and column is a single token, as it would be in a real model's vocabulary.
    return lines * 10 + [GENERAL_TEXT]


def story_corpus() -> list[str]:
    """The demo story's sentence templates: descriptions, yes/no answers, counts of objects."""
    article = lambda word: "an" if word[0] in "aeiou" else "a"  # noqa: E731
    lines = ["USER: Describe the image. ASSISTANT: ", "USER: How many objects are in the image? ASSISTANT: "]
    lines += [f"I count {word}." for word in STORY_COUNT_WORDS]
    for thing in SHAPES + NEVER_DRAWN:
        lines.append(f"USER: Is there {article(thing)} {thing} in the image? ASSISTANT: ")
        lines.append(f"Yes, there is {article(thing)} {thing}. No, there is no {thing}.")
        lines.append(f"ASSISTANT: {article(thing).capitalize()} {thing} and {article(thing)} {thing}.")
    for shape in SHAPES:
        for colour in COLOURS:
            lines.append(f"USER: Is the {shape} {colour}? ASSISTANT: Yes, the {shape} is {colour}. No, the {shape} is {colour}.")
            lines.append(f"ASSISTANT: {article(colour).capitalize()} {colour} {shape} and {article(colour)} {colour} {shape}.")
        for other in SHAPES:
            for side in ("left", "right"):
                lines.append(f"USER: Is the {shape} to the {side} of the {other}? ASSISTANT: ")
                lines.append(f"Yes, the {shape} is to the {side} of the {other}. No, the {shape} is not to the {side} of the {other}.")
    return lines


@dataclass(frozen=True)
class TinyLlavaSize:
    """Sizes of the demo model. Defaults are the demo settings (see trainer/README.md)."""

    # The recipe thumbnails images to half the processor's longest edge; a 96 px processor makes
    # that the 48 px thumbnails the Node format stage writes. The processor upsamples them back to
    # 96, so 16 px patches see what 8 px patches of the thumbnail would: (96/16)^2 = 36 image
    # tokens, two patch columns per scene column.
    image_size: int = 96  # px
    patch_size: int = 16  # px
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 512  # 256 byte symbols + 5 special tokens + ~250 merges
    # Std of the random init. transformers' default 0.02 leaves a 128-wide random model's logits
    # almost independent of its input (std ~0.015 across images): LoRA would have to grow ~50x
    # before an image moves a logit, and the demo did not learn within its time budget even with
    # full fine-tuning. At 0.1 the random features already carry the image to the logits.
    initializer_range: float = 0.1

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_tokenizer(vocab_size: int):
    """Byte-level BPE (GPT-2/Llama-3 style) trained on the demo corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The trainer is deterministic for a fixed corpus order, so no seed is needed here.
    backend.train_from_iterator(demo_corpus(), trainer=trainer)
    bos_id = backend.token_to_id("<s>")
    # Llama convention: `add_special_tokens=True` prepends <s>; eos is appended by the data code.
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=512,
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


def clip_vision_config(size: TinyLlavaSize | TinyLlavaNextSize, image_size: int):
    """The tiny CLIP vision tower of the LLaVA families (MLP twice the width, as CLIP's)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_hidden * 2,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=image_size,
        patch_size=size.patch_size,
        projection_dim=size.vision_hidden,
        initializer_range=size.initializer_range,
    )


def llama_text_config(size: TinyLlavaSize | TinyLlavaNextSize, tokenizer, max_positions: int):
    """The tiny Llama language model of the LLaVA families, with the demo tokenizer's ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=size.text_hidden * 2,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=size.initializer_range,
    )


def build_model(size: TinyLlavaSize, tokenizer, seed: int):
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    vision_config = clip_vision_config(size, size.image_size)
    text_config = llama_text_config(size, tokenizer, max_positions=512)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=size.image_tokens,
        # With two vision layers the LLaVA default (-2) would skip the last one entirely.
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_processor(size: TinyLlavaSize, tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        # CLIP prepends a CLS embedding; "default" strategy drops it again, so 36 + 1 - 1 tokens.
        num_additional_image_tokens=1,
    )


def write_tiny_llava(out: Path, seed: int = 0, size: TinyLlavaSize | None = None) -> Path:
    """Write the demo model folder and return it. Same seed and size -> same weights."""
    import torch

    size = size or TinyLlavaSize()
    random.seed(seed)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(size.vocab_size)
    model = build_model(size, tokenizer, seed)
    processor = build_processor(size, tokenizer)
    model.save_pretrained(out)
    save_processor(processor, out, CHAT_TEMPLATE)
    return out


def save_processor(processor, out: Path, chat_template: str) -> None:
    """Writes the processor the way every reader of the folder finds it."""
    # The processor saves the tokenizer (tokenizer.json, tokenizer_config.json), the image
    # processor and chat_template.jinja.
    processor.save_pretrained(out)
    # transformers 5 nests the image processor inside processor_config.json; readers that predate
    # that (transformers 4, transformers.js) look for preprocessor_config.json, so write it too.
    processor.image_processor.save_pretrained(out)
    # transformers >= 4.47 writes the template only to chat_template.jinja; older readers
    # (and some JS tooling) look in tokenizer_config.json, so write it there too.
    tokenizer_config_path = out / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    tokenizer_config["chat_template"] = chat_template
    # transformers 5 records its internal backend name here; "PreTrainedTokenizerFast" is the
    # name every reader knows (transformers 4 and 5, transformers.js) for a plain tokenizer.json.
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")


# llava-hf/llava-v1.6-mistral-7b-hf's chat template: Mistral's [INST] turns, images first.
LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\\n' + message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> ' }}"
    "{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class TinyLlavaNextSize:
    """Sizes of the tiny LLaVA-NeXT: 32 px tiles of 8 px patches (16 features each), anyres grid
    pinpoints of 1 x 2, 2 x 1 and 2 x 2 tiles (the 7B: 336 px tiles, up to 672 x 672 / 1008 x 336)."""

    tile: int = 32
    patch_size: int = 8
    pinpoints: tuple[tuple[int, int], ...] = ((32, 64), (64, 32), (64, 64))
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 512
    initializer_range: float = 0.1  # see TinyLlavaSize


def write_tiny_llava_next(out: Path, seed: int = 0, size: TinyLlavaNextSize | None = None) -> Path:
    """A tiny random-init LLaVA-NeXT folder (LlavaNextForConditionalGeneration: CLIP tower, MLP
    projector, learned image-newline vector, Llama), with LlavaNextProcessor and the Mistral template."""
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    size = size or TinyLlavaNextSize()
    random.seed(seed)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(size.vocab_size)
    vision = clip_vision_config(size, size.tile)
    text = llama_text_config(size, tokenizer, max_positions=2048)
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[list(p) for p in size.pinpoints],
        vision_feature_layer=-1,  # with two vision layers, LLaVA's -2 would skip the last one
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    with torch.no_grad():  # transformers draws it at 1/sqrt(hidden); keep it at the tiny init's scale
        model.model.image_newline.normal_(0, size.initializer_range)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    model.save_pretrained(out)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": size.tile}, crop_size={"height": size.tile, "width": size.tile},
        image_grid_pinpoints=[list(p) for p in size.pinpoints],
    )
    processor = LlavaNextProcessor(
        image_processor, tokenizer, patch_size=size.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE, image_token="<image>",
    )
    save_processor(processor, out, LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE)
    return out


# Qwen/Qwen2.5-VL-7B-Instruct's (and Qwen2-VL-7B-Instruct's) chat template.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen/Qwen3-VL-8B-Instruct's chat template without its tool-calling branches: no default system
# turn (Qwen2-VL writes one), a system turn's text parts joined, the image block per image part.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['content'] is string %}{{- messages[0]['content'] }}"
    "{%- else %}{%- for content in messages[0]['content'] %}{%- if 'text' in content %}{{- content['text'] }}{%- endif %}{%- endfor %}"
    "{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}{%- if add_vision_id %}{{- 'Picture ' + image_count.value|string + ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}{%- if add_vision_id %}{{- 'Video ' + video_count.value|string + ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}{%- if 'text' in content %}{{- content['text'] }}{%- endif %}{%- endfor %}"
    "{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2's special tokens (tokenizer.json added_tokens, in their order) and pre-tokenizer regex.
QWEN2_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]
QWEN2_PRETOKENIZER_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def build_qwen2_tokenizer(corpus: list[str], vocab_size: int):
    """Qwen2's kind: NFC, the Qwen2 regex split, byte-level BPE, no bos, eos <|im_end|> (Instruct)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZER_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=QWEN2_SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="right",
        model_max_length=131072, clean_up_tokenization_spaces=False,
    )


@dataclass(frozen=True)
class TinyQwenSize:
    """Sizes of the tiny Qwen2.5-VL. Images keep their own size up to max_pixels (4096: a 64 x 64
    thumbnail is an 8 x 8 patch grid, 16 image tokens after the 2 x 2 merge)."""

    patch_size: int = 8  # px
    merge_size: int = 2
    min_pixels: int = 16 * 16  # one merged token
    max_pixels: int = 64 * 64
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    vocab_size: int = 512
    initializer_range: float = 0.1  # see TinyLlavaSize


def write_tiny_qwen2_5_vl(out: Path, seed: int = 0, size: TinyQwenSize | None = None) -> Path:
    """A tiny random-init Qwen2.5-VL folder, as save_pretrained writes a hub checkpoint."""
    return _write_tiny_qwen(out, "qwen2_5_vl", seed, size or TinyQwenSize())


def write_tiny_qwen3_vl(out: Path, seed: int = 0, size: TinyQwenSize | None = None) -> Path:
    """A tiny random-init Qwen3-VL folder: Qwen3VLForConditionalGeneration (learned, interpolated
    patch position embeddings; DeepStack features from every vision layer added to the first text
    layers; interleaved M-RoPE; q/k norms), Qwen3-VL-Instruct's chat template, Qwen3VLProcessor."""
    return _write_tiny_qwen(out, "qwen3_vl", seed, size or TinyQwenSize())


def _write_tiny_qwen(out: Path, model_type: str, seed: int, size: TinyQwenSize) -> Path:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .vision_processors import IMAGE_ONLY_FAMILIES, image_only_processor_class

    random.seed(seed)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_qwen2_tokenizer(demo_corpus(), size.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_SPECIAL_TOKENS}
    head_dim = size.text_hidden // size.text_heads
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": size.text_hidden,
        "intermediate_size": size.text_hidden * 2,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": size.text_heads,
        "num_key_value_heads": size.text_kv_heads,
        "max_position_embeddings": 2048,
        "initializer_range": size.initializer_range,
        # M-RoPE: the rotary half of each head split into temporal, height and width sections.
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                            "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config = {
        "depth": size.vision_layers,
        "hidden_size": size.vision_hidden,
        "intermediate_size": size.vision_hidden * 2,
        "num_heads": size.vision_heads,
        "out_hidden_size": size.text_hidden,
        "patch_size": size.patch_size,
        "spatial_merge_size": size.merge_size,
        "temporal_patch_size": 2,
        "initializer_range": size.initializer_range,
    }
    if model_type == "qwen2_5_vl":
        text_config["max_window_layers"] = size.text_layers
        # Windows of 2 x 2 merged tokens; the last block attends globally, as in the 7B.
        vision_config["window_size"] = 2 * size.merge_size * size.patch_size
        vision_config["fullatt_block_indexes"] = [size.vision_layers - 1]
        config_class, model_class, template = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, QWEN2_VL_CHAT_TEMPLATE
    else:
        text_config["head_dim"] = head_dim
        text_config["rope_parameters"]["mrope_interleaved"] = True
        # A learned 8 x 8 grid of patch positions, interpolated to each image's grid (48 x 48 in
        # the 8B). DeepStack adds the features of vision layer k to the image positions after
        # text layer k (the 8B taps 3 of its 27 layers into its first 3): one tap here, as
        # features added after the last text layer could not reach any answer token.
        vision_config["num_position_embeddings"] = 64
        vision_config["deepstack_visual_indexes"] = [0]
        config_class, model_class, template = Qwen3VLConfig, Qwen3VLForConditionalGeneration, QWEN3_VL_CHAT_TEMPLATE
    config = config_class(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=size.min_pixels, max_pixels=size.max_pixels, patch_size=size.patch_size, merge_size=size.merge_size,
        temporal_patch_size=2,
        # Qwen3-VL normalises to [-1, 1] (mean = std = 0.5) where Qwen2-VL uses CLIP's statistics.
        **({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]} if model_type == "qwen3_vl" else {}),
    )
    processor = image_only_processor_class(IMAGE_ONLY_FAMILIES[model_type])(image_processor, tokenizer, chat_template=template)
    save_processor(processor, out, template)
    return out


# google/gemma-3-4b-it's chat template (tokenizer_config.json): bos first, a system turn folded
# into the first user turn, "model" for the assistant role, `<start_of_image>` per image.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

# Gemma's specials in Gemma's order (pad 0, eos 1, bos 2, unk 3), then the turn and image tokens.
GEMMA3_SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
    "<end_of_image>", "<image_soft_token>",
]


def build_gemma3_tokenizer(corpus: list[str], vocab_size: int):
    """Gemma's kind: spaces -> "▁" (no prefix space), BPE with byte fallback, bos added, and the
    image tokens Gemma3Processor reads from the tokenizer (boi_token, eoi_token, image_token)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=GEMMA3_SPECIAL_TOKENS + byte_tokens, show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    bos_id = backend.token_to_id("<bos>")
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        padding_side="left", clean_up_tokenization_spaces=False,
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    )


@dataclass(frozen=True)
class TinyGemma3Size:
    """Sizes of the tiny Gemma 3. Every image becomes 32 x 32 px: 8 x 8 SigLIP patches, average-pooled
    2 x 2 into 16 soft tokens (the real model: 896 px, 64 x 64 patches, pooled 4 x 4 into 256)."""

    image_size: int = 32
    patch_size: int = 4
    image_tokens: int = 16
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    # Shorter than a prompt, longer than an image block: the sliding layer masks something.
    sliding_window: int = 24
    vocab_size: int = 600
    initializer_range: float = 0.1  # see TinyLlavaSize


def write_tiny_gemma3(out: Path, seed: int = 0, size: TinyGemma3Size | None = None) -> Path:
    """A tiny random-init Gemma3ForConditionalGeneration folder, as save_pretrained writes a hub
    checkpoint, with Gemma3Processor (its PIL image processor) and Gemma 3's chat template."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    size = size or TinyGemma3Size()
    random.seed(seed)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_gemma3_tokenizer(demo_corpus(), size.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA3_SPECIAL_TOKENS}
    config = Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": size.text_hidden,
            "intermediate_size": size.text_hidden * 2,
            "num_hidden_layers": size.text_layers,
            "num_attention_heads": size.text_heads,
            "num_key_value_heads": size.text_kv_heads,
            "head_dim": size.text_hidden // size.text_heads,
            "query_pre_attn_scalar": size.text_hidden // size.text_heads,
            "sliding_window": size.sliding_window,
            "layer_types": ["sliding_attention", "full_attention"] * (size.text_layers // 2) + ["sliding_attention"] * (size.text_layers % 2),
            "max_position_embeddings": 2048,
            "initializer_range": size.initializer_range,
            "pad_token_id": ids["<pad>"], "bos_token_id": ids["<bos>"], "eos_token_id": ids["<eos>"],
        },
        vision_config={
            "hidden_size": size.vision_hidden,
            "intermediate_size": size.vision_hidden * 2,
            "num_hidden_layers": size.vision_layers,
            "num_attention_heads": size.vision_heads,
            "image_size": size.image_size,
            "patch_size": size.patch_size,
            "vision_use_head": False,
        },
        mm_tokens_per_image=size.image_tokens,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        initializer_range=size.initializer_range,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():
        # Zero-initialised in transformers (the checkpoint supplies it); random here so images matter.
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, size.initializer_range)
    model.generation_config.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.save_pretrained(out)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": size.image_size, "width": size.image_size}, resample=2, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], do_pan_and_scan=None,
    )
    processor = Gemma3Processor(image_processor, tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=size.image_tokens)
    save_processor(processor, out, GEMMA3_CHAT_TEMPLATE)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["llava", "llava_next", "qwen2_5_vl", "qwen3_vl", "gemma3"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    defaults = TinyLlavaSize()
    for name, spec in TinyLlavaSize.__dataclass_fields__.items():
        kind = float if spec.type in (float, "float") else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    if args.arch in ("qwen2_5_vl", "qwen3_vl"):
        # Its image-token count depends on each image's size; the size flags are LLaVA's.
        (write_tiny_qwen2_5_vl if args.arch == "qwen2_5_vl" else write_tiny_qwen3_vl)(args.out, seed=args.seed)
        print(json.dumps({"model_dir": str(args.out.resolve()), "image_tokens": None}))
        return 0
    if args.arch == "llava_next":
        write_tiny_llava_next(args.out, seed=args.seed)
        print(json.dumps({"model_dir": str(args.out.resolve()), "image_tokens": None}))
        return 0
    if args.arch == "gemma3":
        write_tiny_gemma3(args.out, seed=args.seed)
        print(json.dumps({"model_dir": str(args.out.resolve()), "image_tokens": TinyGemma3Size().image_tokens}))
        return 0
    size = TinyLlavaSize(**{name: getattr(args, name) for name in TinyLlavaSize.__dataclass_fields__})
    if size.image_size % size.patch_size:
        parser.error("--image-size must be a multiple of --patch-size")
    write_tiny_llava(args.out, seed=args.seed, size=size)
    print(json.dumps({"model_dir": str(args.out.resolve()), "image_tokens": size.image_tokens}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

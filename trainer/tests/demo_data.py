"""The demo preference task, rendered in Python: the same scenes, questions and token shards the
Node pipeline produces (sharp-rendered scenes -> format -> tokenize -> shard), for tests and for
scripts/demo_learnability.py.

Scene: 96x96 JPEG, light-gray background, 1-3 shapes, each in its own column (left / center /
right third), distinct kinds from {circle, square, triangle}, distinct colours, ~26 px.
Questions: 50% colour, 25% count, 25% position; the rejected answer is always wrong for the image
(a colour absent from it, another count, another column), so only a model that looks at the
image can prefer the chosen answer reliably.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 99, 235),
    "yellow": (234, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
}
COLUMNS = ("left", "center", "right")
COUNT_WORDS = ("one", "two", "three")
SCENE_SIZE = 96
SHAPE_SIZE = 26
THUMBNAIL_EDGE = 48  # px: the Node format stage thumbnails to longest edge 48 before training
BACKGROUND = (224, 224, 224)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    column: int


@dataclass(frozen=True)
class DemoPair:
    sample_id: str
    kind: str  # "color" | "count" | "position"
    question: str
    chosen: str
    rejected: str
    image_jpeg: bytes  # the 48 px thumbnail, as the trainer receives it


def random_scene(rng: random.Random) -> list[SceneObject]:
    count = rng.randint(1, 3)
    shapes = rng.sample(SHAPES, count)
    colours = rng.sample(list(COLOURS), count)
    columns = rng.sample(range(3), count)
    return [SceneObject(s, c, col) for s, c, col in zip(shapes, colours, columns)]


def render_scene(objects: list[SceneObject], rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (SCENE_SIZE, SCENE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    third = SCENE_SIZE // 3
    half = SHAPE_SIZE // 2
    for obj in objects:
        cx = third * obj.column + third // 2 + rng.randint(-2, 2)
        cy = rng.randint(half + 4, SCENE_SIZE - half - 4)
        fill = COLOURS[obj.colour]
        box = (cx - half, cy - half, cx + half, cy + half)
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle((cx - half + 2, cy - half + 2, cx + half - 2, cy + half - 2), fill=fill)
        else:
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return image


def thumbnail_jpeg(image: Image.Image, edge: int = THUMBNAIL_EDGE) -> bytes:
    """The format stage: longest edge -> `edge` px (aspect kept), re-encoded as JPEG."""
    image = image.copy()
    image.thumbnail((edge, edge), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def make_question(objects: list[SceneObject], rng: random.Random) -> tuple[str, str, str, str]:
    """(kind, question, chosen answer, rejected answer)."""
    roll = rng.random()
    if roll < 0.5:
        target = rng.choice(objects)
        absent = [c for c in COLOURS if c not in {o.colour for o in objects}]
        wrong = rng.choice(absent)
        return (
            "color",
            f"What color is the {target.shape}?",
            f"The {target.shape} is {target.colour}.",
            f"The {target.shape} is {wrong}.",
        )
    if roll < 0.75:
        right = len(objects)
        wrong = rng.choice([n for n in (1, 2, 3) if n != right])
        return (
            "count",
            "How many shapes are in the image?",
            f"I count {COUNT_WORDS[right - 1]}.",
            f"I count {COUNT_WORDS[wrong - 1]}.",
        )
    target = rng.choice(objects)
    wrong = rng.choice([c for c in range(3) if c != target.column])
    return (
        "position",
        f"Where is the {target.shape}?",
        f"The {target.shape} is on the {COLUMNS[target.column]}.",
        f"The {target.shape} is on the {COLUMNS[wrong]}.",
    )


def generate_pairs(n: int, seed: int, prefix: str = "demo") -> list[DemoPair]:
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        objects = random_scene(rng)
        image = render_scene(objects, rng)
        kind, question, chosen, rejected = make_question(objects, rng)
        pairs.append(DemoPair(f"{prefix}-{seed}-{i:06d}", kind, question, chosen, rejected, thumbnail_jpeg(image)))
    return pairs


class PairTokenizer:
    """CONTRACT.md's tokenize convention for a model folder (what the Node tokenize stage does)."""

    def __init__(self, model_dir: str | Path):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.tokenizer = self.processor.tokenizer
        self.image_tokens = self.processor._get_num_multimodal_tokens(image_sizes=[(48, 48)])["num_image_tokens"][0]

    def prompt_text(self, question: str, with_image: bool = True) -> str:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)

    def answer_text(self, answer: str) -> str:
        message = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
        return self.tokenizer.apply_chat_template([message], tokenize=False)

    def prompt_ids(self, question: str, with_image: bool = True) -> list[int]:
        text = self.prompt_text(question, with_image).replace("<image>", "<image>" * self.image_tokens)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ([self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []) + ids

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer(self.answer_text(answer), add_special_tokens=False)["input_ids"] + [
            self.tokenizer.eos_token_id
        ]


SHARD_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("prompt_input_ids", pa.list_(pa.int32())),
        ("chosen_input_ids", pa.list_(pa.int32())),
        ("rejected_input_ids", pa.list_(pa.int32())),
        ("image", pa.binary()),
    ]
)


def write_shard(path: Path, pairs: list[DemoPair], tokenizer: PairTokenizer, with_images: bool = True) -> Path:
    rows = {name: [] for name in SHARD_SCHEMA.names}
    for pair in pairs:
        rows["sample_id"].append(pair.sample_id)
        rows["prompt_input_ids"].append(tokenizer.prompt_ids(pair.question, with_images))
        rows["chosen_input_ids"].append(tokenizer.answer_ids(pair.chosen))
        rows["rejected_input_ids"].append(tokenizer.answer_ids(pair.rejected))
        rows["image"].append(pair.image_jpeg if with_images else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows, schema=SHARD_SCHEMA), path)
    return path


def write_demo_shards(
    model_dir: str | Path, out_dir: Path, n_train: int, n_eval: int, seed: int = 0, shard_size: int = 1000
) -> tuple[list[Path], list[Path]]:
    """Train shards and held-out shards (disjoint scenes: different generator streams)."""
    tokenizer = PairTokenizer(model_dir)
    train = generate_pairs(n_train, seed, "train")
    held_out = generate_pairs(n_eval, seed + 10_000, "eval")
    train_paths = [
        write_shard(out_dir / f"train-{i:03d}.parquet", train[start : start + shard_size], tokenizer)
        for i, start in enumerate(range(0, len(train), shard_size))
    ]
    eval_paths = [write_shard(out_dir / "eval-000.parquet", held_out, tokenizer)]
    return train_paths, eval_paths

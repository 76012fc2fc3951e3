"""Processors of families whose transformers class insists on a video processor (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL) without one.

transformers 5 builds a Qwen2-VL processor from an image processor, a tokenizer and a video
processor, and its video processor needs torchvision, which the trainer's lock does not carry
(the registry has no torchvision for its torch). Preference pairs have no videos, so the trainer
uses the same processor class with the video slot removed: the subclass below only narrows
`__init__`, so image processing, image-token expansion and the chat template stay transformers'
own code. The image processor is always the PIL one (Qwen2VLImageProcessorPil), the same with or
without torchvision installed, so pixels do not depend on the machine.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

# model_type -> the processor class transformers uses for it.
IMAGE_ONLY_FAMILIES = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}


@cache
def image_only_processor_class(class_name: str) -> type:
    """`class_name` (e.g. "Qwen2_5_VLProcessor") without its video processor, under the same name
    (so save_pretrained records the real class in processor_config.json)."""
    import transformers

    base = getattr(transformers, class_name)

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any) -> None:
        # ProcessorMixin takes its attributes from this signature: image_processor and tokenizer.
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    # `attributes` is how transformers releases before the signature-based lookup name the slots.
    namespace = {"__init__": __init__, "__module__": __name__, "attributes": ["image_processor", "tokenizer"]}
    return type(class_name, (base,), namespace)


def pil_image_processor(folder: str | Path) -> Any:
    """The folder's Qwen2-VL image processor, PIL backend: `Qwen2VLImageProcessorPil` where
    transformers splits backends, else `Qwen2VLImageProcessor`, which is the PIL/numpy one in
    releases that call the torchvision one `...Fast`."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as cls
    return cls.from_pretrained(folder, local_files_only=True)


def load_image_only_processor(folder: str | Path, model_type: str) -> Any:
    """The processor of an IMAGE_ONLY_FAMILIES model folder: its tokenizer, its chat template and
    the PIL image processor, in the family's own processor class."""
    from transformers import AutoTokenizer

    cls = image_only_processor_class(IMAGE_ONLY_FAMILIES[model_type])
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    template_file = Path(folder) / "chat_template.jinja"
    chat_template = template_file.read_text(encoding="utf-8") if template_file.is_file() else getattr(tokenizer, "chat_template", None)
    return cls(image_processor=pil_image_processor(folder), tokenizer=tokenizer, chat_template=chat_template)

"""Qwen2-VL / Qwen2.5-VL: their processor without torchvision, and their 3-D (mrope) positions.

The processors declare a video processor, which transformers builds only with torchvision (absent
here: PyPI's builds need CUDA or another torch). `images_only(cls)` is the processor class with
images and text only: the same image expansion, no videos. Positions are the model's own
`get_rope_index` (text tokens count 1-D, an image's tokens take its (t, h, w) grid); `rope_index`
finds it on a loaded model, peft-wrapped or not.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}


@functools.cache
def images_only(cls: type) -> type:
    """`cls` (Qwen2VLProcessor, Qwen2_5_VLProcessor) without its video processor. transformers reads a
    processor's parts from its __init__ signature, so this one names the image processor and the
    tokenizer only; it keeps the class name, so a saved processor is the ordinary one."""

    class ImagesOnly(cls):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        def __reduce__(self):  # pickled by its parts (data loader workers): the class is made, not importable
            return _rebuild, (cls, self.image_processor, self.tokenizer, self.chat_template)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    ImagesOnly.__module__ = cls.__module__
    return ImagesOnly


def _rebuild(cls: type, image_processor: Any, tokenizer: Any, chat_template: str | None) -> Any:
    return images_only(cls)(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def family(folder: str | os.PathLike) -> str | None:
    """The family (qwen2_vl, qwen2_5_vl) of a checkpoint or run folder of one (its config's model_type, or for an
    adapter run, which has no config.json, the processor class saved beside it), else None."""
    folder = Path(folder).expanduser()
    for name, key in (("config.json", "model_type"), ("processor_config.json", "processor_class"),
                      ("tokenizer_config.json", "processor_class")):
        path = folder / name
        value = json.loads(path.read_text(encoding="utf-8")).get(key) if path.is_file() else None
        for model_type, processor_class in PROCESSORS.items():
            if value in (model_type, processor_class):
                return model_type
    return None


def processor(model_type: str, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> Any:
    """The images-only processor of a Qwen2-VL / Qwen2.5-VL checkpoint."""
    import transformers

    cls = images_only(getattr(transformers, PROCESSORS[model_type]))
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def uses_mrope(model: Any) -> bool:
    """Whether a (maybe peft-wrapped) model places tokens with 3-D rope positions."""
    return getattr(getattr(model, "config", None), "model_type", None) in MODEL_TYPES


def rope_index(model: Any) -> Any:
    """The model's `get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=..., attention_mask=...)`
    -> (positions [3, batch, length], deltas [batch, 1]); it reads the config only, never weights."""
    for module in model.modules():
        if hasattr(module, "get_rope_index") and hasattr(module, "language_model"):
            return module.get_rope_index
    raise ValueError(f"{type(model).__name__} has no get_rope_index: not a Qwen2-VL / Qwen2.5-VL model")


def positions(rope_index: Any, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor | None,
              image_grid_thw: torch.Tensor | None, attention_mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(3-D positions [3, batch, length], rope deltas [batch]) of prompts: the delta is what a token after
    the prompt adds to its 1-D text position (0 without images)."""
    if mm_token_type_ids is None:
        mm_token_type_ids = torch.zeros_like(input_ids, dtype=torch.int)
    out, deltas = rope_index(input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                             attention_mask=attention_mask)
    return out, deltas.reshape(-1)

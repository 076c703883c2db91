"""Load a vision-language checkpoint: the model through AutoModelForImageTextToText, its AutoProcessor.

Which folders are vision-language models is the config's own answer: its model_type is one that
transformers maps to an image-text-to-text model. Real weights come from the user's own folder
(nothing is downloaded); tests and the demo use tiny random models (tiny.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def model_type(name_or_path: str | os.PathLike) -> str | None:
    """The model_type of a checkpoint folder's config.json (None without one)."""
    import json

    config = Path(str(name_or_path)).expanduser() / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("model_type")


def is_vision_model(name_or_path: str | os.PathLike) -> bool:
    """Whether a checkpoint folder holds a model that AutoModelForImageTextToText loads."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type(name_or_path) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def load_processor(folder: str | os.PathLike) -> Any:
    """The folder's AutoProcessor, its tokenizer with a pad token (models.with_pad_token). Qwen2-VL / Qwen2.5-VL
    processors also declare a video processor that needs torchvision; where it is absent they are built for
    images and text alone (vision/qwen.py)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    from sftune.models import with_pad_token
    from sftune.vision import qwen

    try:
        processor = AutoProcessor.from_pretrained(str(folder))
    except (ImportError, AttributeError, OSError) as err:  # the video processor: no torchvision, no config
        family = qwen.family(folder)
        about_videos = "torchvision" in str(err).lower() or "video" in str(err).lower()
        if not about_videos or family not in qwen.MODEL_TYPES:
            raise
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        processor = qwen.processor(family, AutoImageProcessor.from_pretrained(str(folder)), tokenizer,
                                   chat_template=tokenizer.chat_template)
    with_pad_token(processor.tokenizer)
    return processor


def load(folder: str | os.PathLike, *, dtype: Any = "auto", attn_implementation: str | None = "sdpa",
         **options: Any) -> tuple[Any, Any]:
    """(model, processor) of a vision-language checkpoint folder (load_processor: its tokenizer pads)."""
    from transformers import AutoModelForImageTextToText

    from sftune.models import ModelNotAvailableError

    folder = Path(str(folder)).expanduser()
    try:
        processor = load_processor(folder)
        model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype,
                                                            attn_implementation=attn_implementation, **options)
    except OSError as err:
        raise ModelNotAvailableError(
            f"Could not load the vision-language model in folder '{folder}': {err}\n"
            "The folder needs config.json, the processor files (preprocessor_config.json, tokenizer) and "
            "the weights as *.safetensors.") from err
    return model, processor

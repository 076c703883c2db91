"""OpenAI `image_url` parts in /v1/chat/completions: read for a vision-language run, refused for a text-only one.

Images arrive as `data:image/...;base64,` URLs only. File paths and web URLs are refused: a server
that opened any path a client names would let every client read (and probe) the server's disk, and
nothing is downloaded. A client with a local file sends it base64-encoded (the openai client's way).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sftune.data.errors import DataError
from sftune.serve.protocol import ApiError

IMAGE_PARTS = ("image_url", "image")


def parts(messages: list[dict[str, Any]]) -> list[tuple[str, dict]]:
    """(field, part) of every image part in the messages, in order."""
    found = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            found += [(f"messages[{i}].content[{k}]", p) for k, p in enumerate(content)
                      if isinstance(p, dict) and p.get("type") in IMAGE_PARTS]
    return found


def refuse(messages: list[dict[str, Any]], model: str) -> None:
    """400 when a text-only model gets an image."""
    found = parts(messages)
    if found:
        raise ApiError(400, f"{found[0][0]} is an image part, but model {model!r} is a text-only run; images need a "
                            "vision-language run (one trained from a model that AutoModelForImageTextToText loads). "
                            "Send text parts only.", param=found[0][0], code="image_input_not_supported")


def prompt(messages: list[dict[str, Any]], tools: list[dict] | None, served: Any, model: Any
           ) -> tuple[list[int], dict[str, torch.Tensor]]:
    """(prompt ids, the processor's pixel inputs) for a vision-language run, rendered as training encoded it."""
    from sftune.data import images as image_refs
    from sftune.vision import generate as vision_generate

    try:
        conversation = vision_generate.conversation_of(messages, tools)
    except DataError as err:
        raise ApiError(400, str(err), param=err.field) from None
    decoded = []
    for (field, _), ref in zip(parts(messages), conversation.images):
        if not ref.startswith("data:"):
            raise ApiError(400, f"{field}: this server reads images sent as data URLs only "
                                f"(data:image/png;base64,...), not {ref[:60]!r}: it opens no file paths and downloads "
                                "nothing. Send the image's bytes base64-encoded in the URL.", param=field,
                           code="invalid_image_url")
        try:
            decoded.append(image_refs.load(ref, field))
        except DataError as err:
            raise ApiError(400, str(err), param=field, code="invalid_image") from None
    try:
        inputs = vision_generate.prompt_inputs(conversation, served.processor, served.template, images=decoded)
    except ValueError as err:
        raise ApiError(400, f"messages: {err}", param="messages") from None
    ids = inputs.pop("input_ids")[0].tolist()
    inputs.pop("attention_mask", None)
    dtype = next(model.parameters()).dtype
    tensors = {}
    for key, value in inputs.items():
        tensor = torch.from_numpy(np.asarray(value)).to(model.device)
        tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return ids, tensors

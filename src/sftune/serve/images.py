"""OpenAI `image_url` parts in /v1/chat/completions: read for a vision-language run, refused for a text-only one;
`prompt` turns a request's messages into the served model's inputs either way (its modality's prompt).

Images arrive as `data:image/...;base64,` URLs only. File paths and web URLs are refused: a server
that opened any path a client names would let every client read (and probe) the server's disk, and
nothing is downloaded. A client with a local file sends it base64-encoded (the openai client's way).
"""

from __future__ import annotations

from typing import Any

import torch

from sftune import generation
from sftune.data import images as image_refs
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
           ) -> tuple[list[int], dict[str, torch.Tensor] | None]:
    """(prompt ids, the model's other inputs on its device: an image prompt's pixels, else None) of a chat request,
    rendered as training encoded it by the served name's modality; image parts refused for a text-only run."""
    if not served.modality.reads_images:
        refuse(messages, served.name)  # the name the request asked for

    def decoded(refs: list[str]) -> list[Any]:
        found = []
        for (field, _), ref in zip(parts(messages), refs):
            if not ref.startswith("data:"):
                raise ApiError(400, f"{field}: this server reads images sent as data URLs only "
                                    f"(data:image/png;base64,...), not {ref[:60]!r}: it opens no file paths and "
                                    "downloads nothing. Send the image's bytes base64-encoded in the URL.", param=field,
                               code="invalid_image_url")
            try:
                found.append(image_refs.load(ref, field))
            except DataError as err:
                raise ApiError(400, str(err), param=field, code="invalid_image") from None
        return found

    try:
        ids, extra = served.modality.prompt(messages, served.template, tools=tools, read_images=decoded)
    except DataError as err:
        raise ApiError(400, str(err), param=err.field) from None
    except ValueError as err:
        raise ApiError(400, f"messages: {err}", param="messages") from None
    return ids, generation.model_inputs(extra, model) if extra else None

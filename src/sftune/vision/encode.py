"""An image-text conversation -> input_ids + labels, with the model's processor expanding each image.

The text is rendered by the run's template exactly as for text-only training (the same segments,
the same masking policies), with each `<image>` placeholder written as the model's own image text
(`image_text`). The whole text is tokenized once with character offsets, which gives the labels;
then the processor turns the same text and the images into the ids the model sees, where each
image becomes its run of image tokens. The two id lists are aligned (the processor inserts
tokens), every inserted token is masked, and the trained ids must come through unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sftune.data import images as image_refs
from sftune.data.schema import Conversation
from sftune.encode.labels import IGNORE, messages_and_tools, render_spans, text_labels
from sftune.errors import UserError
from sftune.templates import Template


class VisionEncodeError(UserError, ValueError):
    """A record that cannot be encoded for a vision-language model (said with the record's place by the caller)."""


def image_text(processor: Any) -> str:
    """What stands for one image in the text the processor expands: Qwen2-VL's
    `<|vision_start|><|image_pad|><|vision_end|>`, Gemma 3's `<start_of_image>`, else the image token."""
    tokenizer = processor.tokenizer
    start, end = getattr(tokenizer, "vision_start_token", None), getattr(tokenizer, "vision_end_token", None)
    if start is None and _token_id(tokenizer, "<|vision_start|>") is not None:
        start, end = "<|vision_start|>", "<|vision_end|>"
    if start is not None:
        return f"{start}{processor.image_token}{end}"
    return getattr(processor, "boi_token", None) or processor.image_token


def image_token_ids(processor: Any) -> set[int]:
    """The ids of every token a processor writes for an image (image, boundaries, Idefics3's tags)."""
    tokenizer = processor.tokenizer
    names = {processor.image_token, getattr(processor, "boi_token", None), getattr(tokenizer, "eoi_token", None),
             getattr(tokenizer, "image_token", None), getattr(processor, "fake_image_token", None),
             getattr(processor, "global_image_tag", None), "<|vision_start|>", "<|vision_end|>"}
    ids = {_token_id(tokenizer, n) for n in names if n}
    return ids - {None}


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of a token of the vocabulary, None when it is not one (get_vocab() is slow on large vocabularies)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
        return None
    return token_id


def render(conversation: Conversation | dict, processor: Any, template: Template, *, policy: str = "assistant",
           reasoning: str = "think_and_answer", train_empty_think: bool = False
           ) -> tuple[str, list[tuple[int, int, float]], list[dict]]:
    """(text with each image written as the model's image text, trained character spans, messages)."""
    messages, tools = messages_and_tools(conversation)
    marker = image_text(processor)
    messages = [{**m, "content": m["content"].replace(image_refs.PLACEHOLDER, marker)} for m in messages]
    text, spans = render_spans(template, messages, tools, policy, reasoning=reasoning,
                               train_empty_think=train_empty_think)
    return text, spans, messages


def processor_inputs(processor: Any, texts: list[str], images: list[list[Any]]) -> dict[str, Any]:
    """The processor's output (numpy) for texts and their images (a list per text, maybe empty)."""
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "np", "add_special_tokens": False}
    if any(images):
        nested = type(processor).__name__.startswith(("Idefics", "SmolVLM"))
        kwargs["images"] = [list(i) for i in images] if nested else [im for row in images for im in row]
    return dict(processor(**kwargs))


def align(expanded: list[int], ids: list[int], labels: np.ndarray, weights: np.ndarray | None, image_ids: set[int]
          ) -> tuple[list[int], list[int], list[float] | None]:
    """Labels of the text's own tokens carried onto the processor's ids. The processor inserts image
    tokens, and some write text around them (Gemma 3's blank lines, which may merge with a newline
    before them): tokens in runs both lists share keep their labels, every other token is masked,
    and the trained tokens must come through unchanged."""
    from difflib import SequenceMatcher

    out_labels = [IGNORE] * len(expanded)
    out_weights = [0.0] * len(expanded)
    for a, b, n in SequenceMatcher(None, expanded, ids, autojunk=False).get_matching_blocks():
        for j in range(n):
            if expanded[a + j] not in image_ids:
                out_labels[a + j] = int(labels[b + j])
                out_weights[a + j] = float(weights[b + j]) if weights is not None else 0.0
    trained_before = [t for t, label in zip(ids, labels) if label != IGNORE and t not in image_ids]
    trained_after = [t for t, label in zip(expanded, out_labels) if label != IGNORE]
    if trained_before != trained_after:
        raise VisionEncodeError(
            "the processor changed trained tokens while expanding the images: the template and the processor "
            "disagree about the image text; name the template with data.template")
    return expanded, out_labels, (out_weights if weights is not None else None)


def encode(conversation: Conversation, processor: Any, template: Template, *, policy: str = "assistant",
           max_len: int | None = None, reasoning: str = "think_and_answer", train_empty_think: bool = False
           ) -> dict[str, Any] | None:
    """input_ids, labels (and loss_weights), the rendered text and the image references of one conversation.

    Returns None when nothing is left to train. A record longer than max_len is refused
    (VisionEncodeError): cutting inside an image's tokens would break it, and cutting the prompt
    would cut images out.
    """
    text, spans, messages = render(conversation, processor, template, policy=policy, reasoning=reasoning,
                                   train_empty_think=train_empty_think)
    tokenizer = processor.tokenizer
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    weighted = any(m.get("weight") is not None for m in messages)
    labels, weights = text_labels(enc["input_ids"], enc["offset_mapping"], spans, len(text), weighted)
    refs = list(conversation.images if isinstance(conversation, Conversation) else conversation.get("images") or [])
    loaded = [image_refs.load(ref, f"images[{i}]") for i, ref in enumerate(refs)]
    expanded = processor_inputs(processor, [text], [loaded])["input_ids"][0].tolist()
    ids, out_labels, out_weights = align(expanded, enc["input_ids"], labels, weights, image_token_ids(processor))
    if max_len is not None and len(ids) > max_len:
        raise VisionEncodeError(f"is {len(ids)} tokens with its images, over max_len={max_len}; raise data.max_len "
                                "or use smaller images (the processor's size limits)")
    if all(label == IGNORE for label in out_labels):
        return None
    out = {"input_ids": ids, "labels": out_labels, "text": text, "images": refs}
    if out_weights is not None:
        out["loss_weights"] = out_weights
    return out

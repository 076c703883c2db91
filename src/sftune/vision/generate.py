"""Answers of a vision-language run to conversations with images, rendered exactly as training encoded them.

    loaded = runs.load("runs/shapes")
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "cat.png"}},
                                             {"type": "text", "text": "What is it?"}]}]
    [answer] = generate(loaded, [messages], GenerationOptions(max_new_tokens=20))

A conversation is OpenAI messages (typed image parts) or a Conversation; it goes through the same
conversion as training data (data.formats), the same template and the same image text, and the
processor expands each image: the prompt's ids are the training prompt's ids. Stops, stop strings
and sampling are sftune.generation's.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from sftune import generation
from sftune.data import images as image_refs
from sftune.data.schema import Conversation
from sftune.encode.labels import messages_and_tools
from sftune.generation import Completion, GenerationOptions
from sftune.vision.dataset import PER_TOKEN, stack_padded
from sftune.vision.encode import image_text, processor_inputs


def conversation_of(messages: Conversation | Sequence[dict] | dict, tools: list[dict] | None = None) -> Conversation:
    """OpenAI / ShareGPT messages (image parts, or `<image>` text with an `images` list in a record dict)
    -> the Conversation training would have read (DataError naming the field when one is wrong)."""
    from sftune.data import formats

    if isinstance(messages, Conversation):
        return messages
    record = dict(messages) if isinstance(messages, dict) else {"messages": list(messages)}
    if tools is not None:
        record["tools"] = tools
    return formats.messages(record, {})


def render_prompt(conversation: Conversation, processor: Any, template: Any) -> str:
    """The prompt text: the training template with the generation prompt, each `<image>` written as the
    model's image text (as vision.encode.render writes it)."""
    messages, tools = messages_and_tools(conversation)
    marker = image_text(processor)
    messages = [{**m, "content": m["content"].replace(image_refs.PLACEHOLDER, marker)} for m in messages]
    return template.render(messages, tools=tools, add_generation_prompt=True)


def prompt_inputs(conversation: Conversation, processor: Any, template: Any, images: Sequence[Any] | None = None
                  ) -> dict[str, np.ndarray]:
    """The processor's inputs for one prompt (input_ids [1, n], pixel_values ...). `images` are decoded
    PIL images in order; by default the conversation's references are read (paths, data URLs)."""
    if images is None:
        images = [image_refs.load(ref, f"images[{i}]") for i, ref in enumerate(conversation.images)]
    placeholders = image_refs.count_placeholders(conversation)
    if placeholders != len(images):
        raise ValueError(f"the conversation has {placeholders} image placeholders but {len(images)} images; "
                         "give one image per <image> (or per image part)")
    return processor_inputs(processor, [render_prompt(conversation, processor, template)], [list(images)])


def batch_inputs(rows: list[dict[str, np.ndarray]], pad: int) -> dict[str, torch.Tensor]:
    """Rows of processor inputs -> one left-padded batch (ids, mask, per-token extras) with their pixels stacked."""
    width = max(r["input_ids"].shape[1] for r in rows)
    out: dict[str, list] = {}
    for r in rows:
        missing = width - r["input_ids"].shape[1]
        out.setdefault("input_ids", []).append(np.pad(r["input_ids"], [(0, 0), (missing, 0)], constant_values=pad))
        out.setdefault("attention_mask", []).append(
            np.pad(np.ones_like(r["input_ids"]), [(0, 0), (missing, 0)]))
        for key, value in r.items():
            if key in ("input_ids", "attention_mask"):
                continue
            value = np.asarray(value)
            if key in PER_TOKEN:
                value = np.pad(value, [(0, 0), (missing, 0)])
            out.setdefault(key, []).append(value)
    return {key: stack_padded(values) for key, values in out.items()}


def _chunks(order: list[int], rows: list[dict], size: int) -> list[list[int]]:
    """Batches of up to `size` rows, rows with images apart from rows without (their inputs differ in kind)."""
    chunks: list[list[int]] = []
    for i in order:
        if not chunks or len(chunks[-1]) == size or sorted(rows[chunks[-1][0]]) != sorted(rows[i]):
            chunks.append([])
        chunks[-1].append(i)
    return chunks


def prompt(processor: Any, messages: Any, template: Any, *, tools: list[dict] | None = None,
           read_images: Callable[[list[str]], list[Any]] | None = None) -> tuple[list[int], dict[str, np.ndarray]]:
    """(prompt ids, the processor's other inputs: pixels ...) of one conversation (OpenAI messages or a
    Conversation) as training encoded it; `read_images` decodes its image references (default: image_refs.load)."""
    conversation = conversation_of(messages, tools)
    images = read_images(list(conversation.images)) if read_images is not None else None
    inputs = prompt_inputs(conversation, processor, template, images=images)
    ids = inputs.pop("input_ids")[0].tolist()
    inputs.pop("attention_mask", None)
    return ids, inputs


def answers(processor: Any, model: Any, template: Any, conversations: Sequence[Any],
            options: GenerationOptions = GenerationOptions(), *, stop_token_ids: Sequence[int] = (),
            batch_size: int = 8, progress: bool = False, console: Any = None) -> list[Completion]:
    """Answers of a vision-language model to conversations, in order; batched with left padding (batch_size=1:
    one at a time), stopped at `stop_token_ids` (else EOS) and at stop strings."""
    tokenizer = processor.tokenizer
    rows = [prompt_inputs(conversation_of(c), processor, template) for c in conversations]
    order = sorted(range(len(rows)), key=lambda i: (sorted(rows[i]), -rows[i]["input_ids"].shape[1]))
    stops = list(stop_token_ids) or [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    kwargs = generation.generate_kwargs(tokenizer, options, stops, pad)
    if options.sampling and options.seed is not None:
        torch.manual_seed(options.seed)
    results: list[Completion | None] = [None] * len(rows)
    was_training = model.training
    model.eval()
    with generation.TokenProgress(progress, console, "generating", len(rows)) as bar:
        for chunk in _chunks(order, rows, batch_size):
            batch = generation.model_inputs(batch_inputs([rows[i] for i in chunk], pad), model)
            width = batch["input_ids"].shape[1]
            with torch.no_grad():
                out = model.generate(**batch, **kwargs)
            for i, row in zip(chunk, out):
                results[i] = generation.completion_of(tokenizer, row[width:].tolist(),
                                                      rows[i]["input_ids"].shape[1], options, set(stops))
            bar.advance(len(chunk), sum(results[i].completion_tokens for i in chunk))
    model.train(was_training)
    return results  # type: ignore[return-value]


def generate(loaded: Any, conversations: Sequence[Any], options: GenerationOptions = GenerationOptions(), *,
             batch_size: int = 8, progress: bool = False, console: Any = None) -> list[Completion]:
    """Answers of a vision-language run (runs.load) to conversations (see `answers`)."""
    return answers(loaded.processor, loaded.model, loaded.template, conversations, options,
                   stop_token_ids=loaded.stop_token_ids, batch_size=batch_size, progress=progress, console=console)


def stream(loaded: Any, conversation: Any, options: GenerationOptions = GenerationOptions()) -> Iterator[str]:
    """The answer to one conversation with images as text pieces while it is generated (runs.Loaded.stream)."""
    return loaded.stream(conversation, options)

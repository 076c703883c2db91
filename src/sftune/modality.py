"""What differs between a text run and an image-text run, as one value the data path calls.

The modality is decided once, at the top (the training recipe from its model, `runs.load` and
`runs.modality_of` from a folder); every floor below receives a Modality and calls it, never asking
which one it is:

    modality.encode(conversation, template, options)            one conversation -> input_ids, labels or None
    modality.encode_dataset(conversations, template, options)   -> (datasets.Dataset, EncodeReport)
    modality.batches(dataset, packing=, max_len=, pad_token_id=)  -> (rows as the Trainer sees them, collator)
    modality.save(run_dir, tokenizer)                           what a run folder keeps beside model and tokenizer

and inference (runs.load decides it for a loaded model; chat, generate, serve and the web UI call it):

    modality.prompt(messages, template, tools=, read_images=)   one chat prompt -> (ids, extra model inputs)
    modality.generate(model, template, conversations, options, stop_token_ids=, batch_size=)  -> [Completion]

`text(tokenizer)` builds the text one here; `sftune.vision.modality.image_text` the image-text one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sftune import generation
from sftune.data.schema import Conversation
from sftune.encode import EncodeOptions, EncodeReport, encode, encode_dataset
from sftune.encode.labels import messages_and_tools
from sftune.packing import collate_packed, collate_padded, packed_rows
from sftune.templates import Template


@dataclass(frozen=True)
class Modality:
    """The encoder, the collator, the prompt, the batched answers and the few other things an image-text run does
    its own way (see the module)."""

    name: str  # "text" or "image-text", for messages
    tokenizer: Any = field(repr=False)
    encode: Callable[[Conversation, Template, EncodeOptions], dict[str, Any] | None] = field(repr=False)
    encode_dataset: Callable[[list[Conversation], Template, EncodeOptions], tuple[Any, EncodeReport]] = field(
        repr=False)
    batches: Callable[..., tuple[Any, Callable]] = field(repr=False)
    # (messages or a Conversation, template, *, tools=None, read_images=None) -> (the prompt's ids, the other inputs
    # the model takes with them, as arrays: an image prompt's pixels); read_images(refs) decodes a prompt's images
    # the caller's way (a server reads data URLs only), else they are read as training reads them
    prompt: Callable[..., tuple[list[int], dict[str, Any]]] = field(repr=False)
    # (model, template, conversations, options, *, stop_token_ids, batch_size, progress, console) -> [Completion]:
    # the answers to whole conversations (a Conversation, or messages), batched
    generate: Callable[..., list[generation.Completion]] = field(repr=False)
    save: Callable[[Path, Any], None] = field(repr=False, default=lambda run_dir, tokenizer: None)
    reads_images: bool = False  # records' images become the model's image tokens (else a record with images is refused)
    image_token_ids: frozenset[int] = frozenset()  # the tokens that stand for images (inspect shows one run each)
    generation_eval_refused: str | None = None  # why eval.generate_metrics cannot run during training (None: it can)
    processor: Any = field(default=None, repr=False)  # an image-text model's processor (None: text)


def text(tokenizer: Any) -> Modality:
    """The text modality: the tokenizer encodes (sftune.encode), rows pack or pad (sftune.packing)."""
    def encode_one(conversation: Conversation, template: Template, options: EncodeOptions) -> dict[str, Any] | None:
        return encode(conversation, tokenizer, template, policy=options.policy, max_len=options.max_len,
                      reasoning=options.reasoning, train_empty_think=options.train_empty_think)

    def encode_many(conversations: list[Conversation], template: Template, options: EncodeOptions
                    ) -> tuple[Any, EncodeReport]:
        return encode_dataset(conversations, tokenizer, template, options, progress=False)

    def prompt(messages: Any, template: Template, *, tools: list[dict] | None = None,
               read_images: Callable | None = None) -> tuple[list[int], dict[str, Any]]:
        normalized, own = messages_and_tools(messages)
        text = template.render(normalized, tools if tools is not None else own, add_generation_prompt=True)
        return generation.encode_prompts(tokenizer, [text])[0], {}

    def answers(model: Any, template: Template, conversations: list[Any], options: generation.GenerationOptions,
                *, stop_token_ids: list[int], batch_size: int = 16, progress: bool = False, console: Any = None
                ) -> list[generation.Completion]:
        prompts = [template.render(*messages_and_tools(c), add_generation_prompt=True) for c in conversations]
        return generation.generate(model, tokenizer, prompts, options, stop_token_ids=stop_token_ids,
                                   batch_size=batch_size, progress=progress, console=console)

    return Modality("text", tokenizer, encode_one, encode_many, text_batches, prompt, answers)


def text_batches(dataset: Any, *, packing: bool, max_len: int, pad_token_id: int) -> tuple[Any, Callable]:
    """(dataset as the Trainer sees it, collator) of encoded text: packed rows and padding-free batches, or
    padded sequences with a `length` column for length-grouped sampling (the collator drops it)."""
    if packing:
        return packed_rows(dataset, max_len), collate_packed
    dataset = dataset.add_column("length", [len(x) for x in dataset["input_ids"]])
    return dataset, functools.partial(_without_length, pad_token_id=pad_token_id)


def _without_length(features: list[dict[str, Any]], *, pad_token_id: int) -> dict[str, Any]:
    return collate_padded([{k: v for k, v in f.items() if k != "length"} for f in features], pad_token_id=pad_token_id)

"""The image-text Modality (sftune.modality): the processor encodes each conversation with its images
expanded into image tokens (vision.encode), the collator adds each batch's pixel inputs (vision.dataset), and
prompts and answers carry the images the same way (vision.generate)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from sftune.data.schema import Conversation
from sftune.encode import EncodeOptions
from sftune.modality import Modality
from sftune.templates import Template
from sftune.vision import dataset, encode, generate, qwen

# Why eval.generate_metrics is left out of an image-text run's training.
NO_GENERATION_EVAL = ("the in-training generation metrics send no images yet; the held-out loss and token accuracy "
                      "are measured (answer a held-out file after training with `sftune generate RUN -i FILE -o OUT`)")


def image_text(processor: Any, model: Any = None) -> Modality:
    """The Modality of a vision-language model's `processor`; `model` places packed Qwen2-VL / Qwen2.5-VL
    sequences (its rope_index), needed only when rows pack."""
    def encode_one(conversation: Conversation, template: Template, options: EncodeOptions) -> dict[str, Any] | None:
        return encode.encode(conversation, processor, template, policy=options.policy, max_len=options.max_len,
                             reasoning=options.reasoning, train_empty_think=options.train_empty_think)

    def encode_many(conversations: list[Conversation], template: Template, options: EncodeOptions):
        return dataset.encode_dataset(conversations, processor, template, options)

    def batches(rows: Any, *, packing: bool, max_len: int, pad_token_id: int) -> tuple[Any, Callable]:
        if packing:  # each sequence's own 3-D positions, from the model's rope_index
            return dataset.packed_rows(rows, max_len), functools.partial(
                dataset.collate_packed, processor=processor, rope_index=qwen.rope_index(model))
        rows = rows.add_column("length", [len(x) for x in rows["input_ids"]])
        return rows, functools.partial(dataset.collate, processor=processor, pad_token_id=pad_token_id)

    def save(run_dir: Path, tokenizer: Any) -> None:
        processor.chat_template = tokenizer.chat_template
        processor.save_pretrained(str(run_dir))  # the image processor beside the tokenizer

    return Modality("image-text", processor.tokenizer, encode_one, encode_many, batches,
                    functools.partial(generate.prompt, processor), functools.partial(generate.answers, processor),
                    save=save, reads_images=True, image_token_ids=frozenset(encode.image_token_ids(processor)),
                    generation_eval_refused=NO_GENERATION_EVAL, processor=processor)

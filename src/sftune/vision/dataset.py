"""Many image-text conversations -> rows (input_ids, labels, the rendered text, image references) and
an EncodeReport; and the collator that pads a batch and adds the processor's pixel inputs.

Pixels are made per batch, not stored: the collator runs the processor again on each row's text and
images (the image processor is deterministic) and checks that its ids are the row's ids.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from sftune.data import images as image_refs
from sftune.data.errors import DataError
from sftune.data.schema import Conversation
from sftune.encode.dataset import EncodeReport, _where
from sftune.packing import collate_padded
from sftune.templates import Template
from sftune.vision.encode import VisionEncodeError, encode, processor_inputs

# Processor outputs with one value per token: padded like input_ids (with 0).
PER_TOKEN = ("token_type_ids", "mm_token_type_ids")
PACKING_REFUSED = ("packing is not available for vision-language models in sftune yet (image token positions and "
                   "Qwen2-VL's 3-D rope positions would have to restart per sequence); batches are padded")


def encode_dataset(conversations: Iterable[Conversation], processor: Any, template: Template, *,
                   policy: str = "assistant", max_len: int | None = None, reasoning: str = "think_and_answer",
                   train_empty_think: bool = False, progress: bool = False) -> tuple[Any, EncodeReport]:
    """(datasets.Dataset with input_ids, labels, text, images, length; EncodeReport)."""
    import datasets

    records = list(conversations)
    report = EncodeReport(total=len(records), tokenizer="processor: " + type(processor).__name__)
    rows: dict[str, list] = {"input_ids": [], "labels": [], "text": [], "images": []}
    weighted = any(m.weight is not None for c in records for m in c.messages)
    if weighted:
        rows["loss_weights"] = []
    iterator = records
    if progress and len(records) >= 200:
        from rich.progress import track

        iterator = track(records, description="encoding images and text", transient=True)
    for k, conversation in enumerate(iterator):
        try:
            row = encode(conversation, processor, template, policy=policy, max_len=max_len, reasoning=reasoning,
                         train_empty_think=train_empty_think)
        except VisionEncodeError as err:
            report.skip(_where(conversation, k), "too_long" if "max_len" in str(err) else "render_error", str(err))
            continue
        except DataError as err:
            report.skip(_where(conversation, k), err.reason, str(err))
            continue
        if row is None:
            report.skip(_where(conversation, k), "no_trained_token", "no token left to train")
            continue
        for key in rows:
            rows[key].append(row.get(key, [0.0] * len(row["input_ids"])) if key == "loss_weights" else row[key])
    report.encoded = len(rows["input_ids"])
    report.tokens = sum(len(ids) for ids in rows["input_ids"])
    report.trained_tokens = sum(sum(1 for x in labels if x != -100) for labels in rows["labels"])
    return datasets.Dataset.from_dict(rows), report


def _stack(values: list[np.ndarray]) -> torch.Tensor:
    """Concatenate per-row arrays along the first axis, zero-padding other axes to the largest
    (Idefics3 holds [1, images, ...] per row; padded images are all zero, which it skips)."""
    shape = [max(v.shape[d] for v in values) for d in range(values[0].ndim)]
    padded = []
    for v in values:
        pad = [(0, 0)] + [(0, shape[d] - v.shape[d]) for d in range(1, v.ndim)]
        padded.append(np.pad(v, pad) if any(p for _, p in pad) else v)
    return torch.from_numpy(np.concatenate(padded, axis=0))


def collate(features: list[dict[str, Any]], *, processor: Any, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A padded batch (input_ids, labels, attention_mask, loss_weights) plus the processor's image
    inputs (pixel_values, image_grid_thw, pixel_attention_mask, token_type_ids ...) for its rows."""
    text = [{k: f[k] for k in ("input_ids", "labels", "loss_weights") if k in f} for f in features]
    batch = collate_padded(text, pad_token_id=pad_token_id)
    longest = batch["input_ids"].shape[1]
    extras: dict[str, list[np.ndarray]] = {}
    for f in features:
        loaded = [image_refs.load(ref, f"images[{i}]") for i, ref in enumerate(f["images"])]
        out = processor_inputs(processor, [f["text"]], [loaded])
        if out["input_ids"][0].tolist() != list(f["input_ids"]):
            raise RuntimeError("the processor's ids differ from the encoded row's: the processor or its "
                               "images changed since encoding; encode the data again")
        for key, value in out.items():
            if key in ("input_ids", "attention_mask"):
                continue
            if key in PER_TOKEN:
                value = np.pad(value, [(0, 0), (0, longest - value.shape[1])])
            extras.setdefault(key, []).append(np.asarray(value))
    for key, values in extras.items():
        batch[key] = _stack(values)
    return batch

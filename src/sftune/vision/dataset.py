"""Many image-text conversations -> rows (input_ids, labels, the rendered text, image references) and
an EncodeReport; the collator that pads a batch and adds the processor's pixel inputs; and, for
Qwen2-VL / Qwen2.5-VL, packed rows and their padding-free collator.

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
from sftune.encode import IGNORE, EncodeOptions
from sftune.encode.dataset import EncodeReport, record_place
from sftune.packing import boundaries, collate_padded
from sftune.templates import Template
from sftune.vision.encode import VisionEncodeError, encode, processor_inputs

# Processor outputs with one value per token: padded like input_ids (with 0).
PER_TOKEN = ("token_type_ids", "mm_token_type_ids")
# Why packing stays off for a family (packed_rows packs the others: Qwen2-VL / Qwen2.5-VL).
PACKING_REFUSED = {
    "gemma3": "Gemma 3 attends bidirectionally within each image's tokens (its token_type_ids mask), which the "
              "packed path's causal per-sequence attention does not keep",
    "llava": "LLaVA rows are not tested packed in sftune yet",
    "idefics3": "Idefics3 rows are not tested packed in sftune yet",
}


def packing_refused(model_type: str) -> str | None:
    """None when a family's rows pack (Qwen2-VL / Qwen2.5-VL: their 3-D rope positions are computed per
    sequence), else why not, naming the family."""
    from sftune.vision import qwen

    if model_type in qwen.MODEL_TYPES:
        return None
    return PACKING_REFUSED.get(model_type, f"{model_type} rows are not tested packed in sftune yet")


def encode_dataset(conversations: Iterable[Conversation], processor: Any, template: Template,
                   options: EncodeOptions = EncodeOptions(), *, progress: bool = False) -> tuple[Any, EncodeReport]:
    """(datasets.Dataset with input_ids, labels, text, images, length; EncodeReport), under `options`' policy,
    reasoning options and max_len."""
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
            row = encode(conversation, processor, template, policy=options.policy, max_len=options.max_len,
                         reasoning=options.reasoning, train_empty_think=options.train_empty_think)
        except VisionEncodeError as err:
            reason = "too_long" if "max_len" in str(err) else "render_error"
            report.skip(record_place(conversation, k), reason, str(err))
            continue
        except DataError as err:
            report.skip(record_place(conversation, k), err.reason, str(err))
            continue
        if row is None:
            report.skip(record_place(conversation, k), "no_trained_token", "no token left to train")
            continue
        for key in rows:
            rows[key].append(row.get(key, [0.0] * len(row["input_ids"])) if key == "loss_weights" else row[key])
    report.encoded = len(rows["input_ids"])
    report.tokens = sum(len(ids) for ids in rows["input_ids"])
    report.trained_tokens = sum(sum(1 for x in labels if x != -100) for labels in rows["labels"])
    return datasets.Dataset.from_dict(rows), report


def stack_padded(values: list[np.ndarray]) -> torch.Tensor:
    """Concatenate per-row arrays along the first axis, zero-padding other axes to the largest
    (Idefics3 holds [1, images, ...] per row; padded images are all zero, which it skips)."""
    shape = [max(v.shape[d] for v in values) for d in range(values[0].ndim)]
    padded = []
    for v in values:
        pad = [(0, 0)] + [(0, shape[d] - v.shape[d]) for d in range(1, v.ndim)]
        padded.append(np.pad(v, pad) if any(p for _, p in pad) else v)
    return torch.from_numpy(np.concatenate(padded, axis=0))


def _pixels(text: str, refs: list[str], ids: list[int], processor: Any) -> dict[str, np.ndarray]:
    """The processor's inputs for one encoded sequence, checked against its ids."""
    loaded = [image_refs.load(ref, f"images[{i}]") for i, ref in enumerate(refs)]
    out = processor_inputs(processor, [text], [loaded])
    if out["input_ids"][0].tolist() != list(ids):
        raise RuntimeError("the processor's ids differ from the encoded row's: the processor or its "
                           "images changed since encoding; encode the data again")
    return out


def collate(features: list[dict[str, Any]], *, processor: Any, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A padded batch (input_ids, labels, attention_mask, loss_weights) plus the processor's image
    inputs (pixel_values, image_grid_thw, pixel_attention_mask, token_type_ids ...) for its rows."""
    text = [{k: f[k] for k in ("input_ids", "labels", "loss_weights") if k in f} for f in features]
    batch = collate_padded(text, pad_token_id=pad_token_id)
    longest = batch["input_ids"].shape[1]
    extras: dict[str, list[np.ndarray]] = {}
    for f in features:
        out = _pixels(f["text"], f["images"], f["input_ids"], processor)
        for key, value in out.items():
            if key in ("input_ids", "attention_mask"):
                continue
            if key in PER_TOKEN:
                value = np.pad(value, [(0, 0), (0, longest - value.shape[1])])
            extras.setdefault(key, []).append(np.asarray(value))
    for key, values in extras.items():
        batch[key] = stack_padded(values)
    return batch


def packed_rows(dataset: Any, max_len: int) -> Any:
    """The encoded dataset packed into rows of <= max_len tokens (best-fit-decreasing bins, as text rows
    pack): each row holds its sequences' input_ids, labels (and loss_weights) end to end, and per
    sequence its length, rendered text and image references, which `collate_packed` reads."""
    import datasets

    from sftune.packing import pack

    lengths = [len(x) for x in dataset["input_ids"]]
    columns = [c for c in ("input_ids", "labels", "loss_weights") if c in dataset.column_names]
    data = {c: dataset[c] for c in columns + ["text", "images"]}
    rows: dict[str, list] = {c: [] for c in columns + ["lengths", "texts", "images"]}
    for members in pack(lengths, max_len):
        for c in columns:
            rows[c].append([v for k in members for v in data[c][k]])
        rows["lengths"].append([lengths[k] for k in members])
        rows["texts"].append([data["text"][k] for k in members])
        rows["images"].append([list(data["images"][k]) for k in members])
    return datasets.Dataset.from_dict(rows)


def collate_packed(features: list[dict[str, Any]], *, processor: Any, rope_index: Any) -> dict[str, torch.Tensor]:
    """One padding-free row [1, T] of every sequence in the features (packed rows): input_ids, labels
    (each sequence's first label -100), loss_weights, the images' pixel inputs in order, and
    position_ids [4, 1, T]: row 0 the text positions restarting at 0 per sequence (how the attention
    finds the sequences), rows 1-3 each sequence's own 3-D rope positions from the model's
    `rope_index` (sftune.vision.qwen.rope_index), as if it were alone; the sequences' `boundaries` for the
    attention. No attention_mask."""
    from sftune.vision import qwen

    ids: list[int] = []
    labels: list[int] = []
    weights: list[float] = []
    text_positions: list[torch.Tensor] = []
    rope: list[torch.Tensor] = []
    extras: dict[str, list[np.ndarray]] = {}
    for f in features:
        start = 0
        for length, text, refs in zip(f["lengths"], f["texts"], f["images"]):
            sequence = list(f["input_ids"][start:start + length])
            out = _pixels(text, refs, sequence, processor)
            grid = torch.from_numpy(np.asarray(out["image_grid_thw"])) if "image_grid_thw" in out else None
            types = torch.from_numpy(np.asarray(out["mm_token_type_ids"])) if "mm_token_type_ids" in out else None
            positions, _ = qwen.positions(rope_index, torch.tensor([sequence]), types, grid)
            rope.append(positions[:, 0])
            text_positions.append(torch.arange(length))
            ids += sequence
            sequence_labels = list(f["labels"][start:start + length])
            labels += [IGNORE] + sequence_labels[1:]
            if "loss_weights" in f:
                weights += list(f["loss_weights"][start:start + length])
            for key, value in out.items():
                if key not in ("input_ids", "attention_mask"):
                    extras.setdefault(key, []).append(np.asarray(value))
            start += length
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
             "position_ids": torch.cat([torch.cat(text_positions)[None], torch.cat(rope, dim=1)])[:, None]}
    if "loss_weights" in features[0]:
        batch["loss_weights"] = torch.tensor([weights], dtype=torch.float32)
    for key, values in extras.items():
        batch[key] = torch.from_numpy(np.concatenate(values, axis=1 if key in PER_TOKEN else 0))
    return {**batch, **boundaries([len(t) for t in text_positions])}

"""Bins and collators: packed (padding-free) batches that keep sequences apart, padded batches otherwise.

Padding-free batches are one row `[1, T]`: the sequences concatenated, `position_ids` restarting at 0
for each, and the label of every sequence's first token -100 (no sequence learns to predict across a
boundary). There is no attention_mask: transformers (5.x, `masking_utils.find_packed_sequence_indices`)
builds a block-diagonal causal mask from the restarting position_ids only when attention_mask is None
AND there is no KV cache, so the model must be called with `use_cache=False` in training, or packed
sequences silently attend to each other. Flash-attention paths read the same position_ids.
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

import torch

from sftune.encode import IGNORE


def pack(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Best-fit-decreasing bins of sequence indices, each bin's total length <= max_len.

    Longest first, each into the open bin with the least room that still fits it. Deterministic:
    ties keep index order. Bins come back in creation order (longest first).
    """
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    bins: list[list[int]] = []
    room_keys: list[tuple[int, int]] = []  # sorted (room left, bin id)
    for k in order:
        length = lengths[k]
        if length > max_len:
            raise ValueError(f"sequence {k} has {length} tokens, more than max_len={max_len}; "
                             "encode with max_len to truncate it first")
        at = bisect.bisect_left(room_keys, (length, -1))
        if at < len(room_keys):
            room, b = room_keys.pop(at)
            bins[b].append(k)
            bisect.insort(room_keys, (room - length, b))
        else:
            bins.append([k])
            bisect.insort(room_keys, (max_len - length, len(bins) - 1))
    return bins


def packed_rows(dataset: Any, max_len: int) -> Any:
    """The encoded dataset packed into rows of <= max_len tokens (one row per bin).

    Each row holds input_ids, labels, position_ids (restarting per sequence) and loss_weights when the
    dataset has them; feed rows to `collate_packed`, which keeps the sequences inside a row apart.
    """
    import datasets

    lengths = [len(x) for x in dataset["input_ids"]]
    bins = pack(lengths, max_len)
    columns = [c for c in ("input_ids", "labels", "loss_weights") if c in dataset.column_names]
    data = {c: dataset[c] for c in columns}
    rows: dict[str, list] = {c: [] for c in columns + ["position_ids"]}
    for members in bins:
        for c in columns:
            rows[c].append([v for k in members for v in data[c][k]])
        rows["position_ids"].append([p for k in members for p in range(lengths[k])])
    return datasets.Dataset.from_dict(rows)


def collate_packed(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Padding-free batch: input_ids, labels, position_ids (and loss_weights) as [1, T]; no attention_mask.

    Features are encoded sequences, or rows from `packed_rows` (their position_ids are kept). The label
    at every position where a sequence starts (position 0) is -100.
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    weights: list[float] = []
    has_weights = "loss_weights" in features[0]
    for feature in features:
        row = list(feature["input_ids"])
        ids += row
        labels += list(feature.get("labels", row))
        positions += list(feature["position_ids"]) if "position_ids" in feature else list(range(len(row)))
        if has_weights:
            weights += list(feature["loss_weights"])
    position_ids = torch.tensor(positions, dtype=torch.long)
    label_tensor = torch.tensor(labels, dtype=torch.long)
    label_tensor[position_ids == 0] = IGNORE
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long)[None],
        "labels": label_tensor[None],
        "position_ids": position_ids[None],
    }
    if has_weights:
        batch["loss_weights"] = torch.tensor(weights, dtype=torch.float32)[None]
    return batch


def text_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """The [B, T] positions that restart at 0 for each packed sequence: position_ids itself, or row 0 of a
    Qwen2-VL / Qwen2.5-VL packed batch's [4, B, T] (text positions, then the 3-D rope positions, the
    layout transformers reads: row 0 finds the sequences, rows 1-3 turn the rotary embedding)."""
    return position_ids[0] if position_ids.dim() == 3 else position_ids


def collate_padded(features: list[dict[str, Any]], pad_token_id: int, *, pad_to_multiple_of: int | None = None,
                   padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Padded batch for packing off: input_ids padded with pad_token_id, labels with -100, attention_mask.

    The pad id is only filler: labels come from the encoder, so an EOS equal to pad stays trained.
    """
    longest = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    has_weights = "loss_weights" in features[0]
    batch: dict[str, list] = {"input_ids": [], "labels": [], "attention_mask": []}
    if has_weights:
        batch["loss_weights"] = []
    for f in features:
        n = len(f["input_ids"])
        pad = longest - n

        def fill(values: Sequence, value: Any) -> list:
            return list(values) + [value] * pad if padding_side == "right" else [value] * pad + list(values)

        batch["input_ids"].append(fill(f["input_ids"], pad_token_id))
        batch["labels"].append(fill(f.get("labels", f["input_ids"]), IGNORE))
        batch["attention_mask"].append(fill([1] * n, 0))
        if has_weights:
            batch["loss_weights"].append(fill(f["loss_weights"], 0.0))
    out = {k: torch.tensor(v, dtype=torch.float32 if k == "loss_weights" else torch.long) for k, v in batch.items()}
    out["labels"][:, 0] = torch.where(out["attention_mask"][:, 0] == 1, IGNORE, out["labels"][:, 0])
    return out


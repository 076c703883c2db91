"""Batches of encoded pairs: the B chosen then the B rejected sequences, packed padding-free into one
row (position_ids restart per sequence) or padded, with `sequence_ids` and the cached reference
log-probs (`ref_chosen`, `ref_rejected`) when the dataset has them."""

from __future__ import annotations

from typing import Any

import torch

from sftune import packing as packing_module


def sequences(features: list[dict[str, Any]]) -> list[dict[str, list]]:
    """The 2B sequences of B pairs: chosen ones first, then rejected ones, in pair order."""
    return [{"input_ids": f[f"{answer}_input_ids"], "labels": f[f"{answer}_labels"]}
            for answer in ("chosen", "rejected") for f in features]


def collate_pairs(features: list[dict[str, Any]], *, packing: bool, pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch of pairs for `sequence_logps` (see the module docstring)."""
    rows = sequences(features)
    if packing:
        batch = packing_module.collate_packed(rows)
        lengths = [len(r["input_ids"]) for r in rows]
        batch["sequence_ids"] = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lengths))[None]
    else:
        batch = packing_module.collate_padded(rows, pad_token_id=pad_token_id)
        batch["sequence_ids"] = torch.arange(len(rows))[:, None].expand_as(batch["input_ids"]).contiguous()
    if "ref_chosen" in features[0]:
        batch["ref_chosen"] = torch.tensor([f["ref_chosen"] for f in features], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([f["ref_rejected"] for f in features], dtype=torch.float32)
    return batch

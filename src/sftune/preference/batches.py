"""Batches of encoded pairs, with `sequence_ids` (0..B-1 the chosen answers, B..2B-1 the rejected ones, in
pair order) and the cached reference log-probs (`ref_chosen`, `ref_rejected`) when the dataset has them.

- shared prompt (packed, with sftune's varlen attention): one padding-free row; per pair, the chosen
  sequence, then the rejected one from its last shared prompt token on, its positions stepping back there,
  so it is a branch of the chosen sequence (`attention.pieces`): the prompt is computed once per pair. The
  shared token is repeated so that its hidden state (the same) predicts the rejected answer's first token.
- packed: the B chosen then the B rejected sequences whole, in one padding-free row;
- padded: the same 2B sequences as padded rows.

Every batch also carries what the loss gathers with, computed here on the CPU (no nonzero, boolean-mask indexing
or bincount on the device per micro-batch): the trained positions (`trained_index`), the sequence of each
(`trained_sequence`) and the trained tokens of each sequence (`sequence_tokens`, [2B]).
"""

from __future__ import annotations

from typing import Any

import torch

from sftune import packing as packing_module
from sftune.encode import IGNORE
from sftune.training.loss import TRAINED_INDEX, shifted_targets, trained_index

TRAINED_SEQUENCE = "trained_sequence"  # [n] the sequence (0..2B-1) of each trained position, in trained_index order
SEQUENCE_TOKENS = "sequence_tokens"  # [2B] trained tokens of each sequence


def sequences(features: list[dict[str, Any]]) -> list[dict[str, list]]:
    """The 2B sequences of B pairs: chosen ones first, then rejected ones, in pair order."""
    return [{"input_ids": f[f"{answer}_input_ids"], "labels": f[f"{answer}_labels"]}
            for answer in ("chosen", "rejected") for f in features]


def shared_length(feature: dict[str, Any]) -> int:
    """How many leading tokens the two sequences of a pair share, none of them trained (the prompt)."""
    chosen, rejected = feature["chosen_input_ids"], feature["rejected_input_ids"]
    limit = min(next(i for i, x in enumerate(feature[f"{answer}_labels"]) if x != IGNORE)
                for answer in ("chosen", "rejected"))
    n = 0
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    return n


def collate_shared(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """One padding-free row of B pairs, each prompt computed once (see the module docstring)."""
    ids, labels, positions, sequence_ids = [], [], [], []
    count = len(features)
    for i, f in enumerate(features):
        chosen = f["chosen_input_ids"]
        branch = max(shared_length(f) - 1, 0)
        rejected = f["rejected_input_ids"][branch:]
        ids += chosen + rejected
        labels += [IGNORE] + f["chosen_labels"][1:] + [IGNORE] + f["rejected_labels"][branch + 1:]
        positions += list(range(len(chosen))) + list(range(branch, branch + len(rejected)))
        sequence_ids += [i] * len(chosen) + [count + i] * len(rejected)
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]), "sequence_ids": torch.tensor([sequence_ids])}


def collate_pairs(features: list[dict[str, Any]], *, packing: bool, pad_token_id: int,
                  shared_prompt: bool = False) -> dict[str, torch.Tensor]:
    """One batch of pairs for `sequence_logps` (see the module docstring); shared_prompt needs packing and a
    model whose attention is sftune's varlen one."""
    if packing and shared_prompt:
        batch = collate_shared(features)
    elif packing:
        rows = sequences(features)
        batch = packing_module.collate_packed(rows)
        lengths = [len(r["input_ids"]) for r in rows]
        batch["sequence_ids"] = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lengths))[None]
    else:
        batch = packing_module.collate_padded(sequences(features), pad_token_id=pad_token_id)
        batch["sequence_ids"] = torch.arange(2 * len(features))[:, None].expand_as(batch["input_ids"]).contiguous()
    index = trained_index(batch)
    batch[TRAINED_INDEX] = index
    batch[TRAINED_SEQUENCE] = batch["sequence_ids"][:, 1:].flatten().index_select(0, index)
    batch[SEQUENCE_TOKENS] = torch.bincount(batch[TRAINED_SEQUENCE], minlength=2 * len(features))
    if "ref_chosen" in features[0]:
        batch["ref_chosen"] = torch.tensor([f["ref_chosen"] for f in features], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([f["ref_rejected"] for f in features], dtype=torch.float32)
    return batch

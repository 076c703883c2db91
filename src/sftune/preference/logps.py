"""Summed log-probabilities of each answer in a batch of pairs, without a [tokens x vocabulary] tensor kept.

A batch holds 2B sequences, the B chosen answers then the B rejected ones (packed in one padding-free row,
or padded rows), and `sequence_ids` saying which sequence each position belongs to. The model's hidden
states at trained positions (the answers) go through the SFT loss's chunked output layer
(`linear_token_loss`, reduction "none"), so peak memory is one chunk of fp32 logits, under ZeRO-3 too.
"""

from __future__ import annotations

import torch

from sftune import attention
from sftune.encode import IGNORE
from sftune.preference.batches import SEQUENCE_TOKENS, TRAINED_SEQUENCE
from sftune.training.loss import (
    PLAIN,
    LogitRule,
    output_model,
    linear_token_loss,
    shifted_targets,
    trained_hidden_states,
)

NOT_MODEL_INPUTS = ("sequence_ids", "ref_chosen", "ref_rejected", TRAINED_SEQUENCE, SEQUENCE_TOKENS)


def token_logps(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, *,
                logit_rule: LogitRule = PLAIN, chunk_size: int | None = None) -> torch.Tensor:
    """[n] log-probability of each target under the model's logits (`logit_rule` applied to `head(hidden)`);
    differentiable in hidden and the head."""
    return -linear_token_loss(hidden, head, targets, logit_rule=logit_rule, chunk_size=chunk_size, reduction="none")


def _check_branches(model, position_ids: torch.Tensor | None) -> None:
    """A shared-prompt batch (positions stepping back to p > 0) is right only under sftune's varlen attention.
    Under it (the default for packed pairs) nothing is read: the check would make the device wait for the host."""
    if position_ids is None or position_ids.shape[1] < 2:
        return
    implementation = getattr(output_model(model).config, "_attn_implementation", None)
    if implementation == attention.NAME:
        return
    steps = position_ids[:, 1:]
    if bool(((steps != 0) & (steps <= position_ids[:, :-1])).any()):
        raise ValueError(f"a shared-prompt batch of pairs needs attn_implementation={attention.NAME!r}, "
                         f"the model has {implementation!r}: collate with shared_prompt=False")


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each sequence's trained tokens [2B], their number [2B]) for a batch of pairs. A batch
    from collate_pairs is read without a host sync; one from elsewhere has its positions found on its device."""
    inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
    _check_branches(model, inputs.get("position_ids"))
    hidden, targets, _, head, rule, _ = trained_hidden_states(model, inputs)
    logps = token_logps(hidden, head, targets, logit_rule=rule)
    if SEQUENCE_TOKENS in batch and TRAINED_SEQUENCE in batch:
        sequence, tokens = batch[TRAINED_SEQUENCE], batch[SEQUENCE_TOKENS]
    else:
        sequence = batch["sequence_ids"][:, 1:][shifted_targets(inputs) != IGNORE]
        tokens = torch.bincount(sequence, minlength=int(batch["sequence_ids"].max()) + 1)
    sums = torch.zeros(tokens.shape[0], dtype=logps.dtype, device=logps.device).index_add(0, sequence, logps)
    return sums, tokens

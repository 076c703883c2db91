"""Summed log-probabilities of each answer in a batch of pairs, without a [tokens x vocabulary] tensor kept.

A batch holds 2B sequences, the B chosen answers then the B rejected ones (packed in one padding-free row,
or padded rows), and `sequence_ids` saying which sequence each position belongs to. The model's hidden
states at trained positions (the answers) go through the output layer a chunk at a time; backward
recomputes each chunk's logits instead of keeping them, so peak memory is one chunk of fp32 logits.
"""

from __future__ import annotations

import torch

from sftune import attention
from sftune.encode import IGNORE
from sftune.training.loss import (
    PLAIN,
    Head,
    LogitRule,
    _logit_chunks,
    _output_model,
    chunk_size_for,
    shifted_targets,
    trained_hidden_states,
)

NOT_MODEL_INPUTS = ("sequence_ids", "ref_chosen", "ref_rejected")


class _TokenLogps(torch.autograd.Function):
    """log softmax(rule(h_i @ W.T + b))[y_i] for each row i, chunk by chunk, logits recomputed in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, rule):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lses = torch.empty_like(out)
        head = Head.of(weight, bias)
        for rows, z, _ in _logit_chunks(hidden, head, chunk_size, rule):
            lse = torch.logsumexp(z, dim=-1)
            out[rows] = z.gather(1, targets[rows, None]).squeeze(1) - lse
            lses[rows] = lse
        ctx.save_for_backward(hidden, weight, bias, targets, lses)
        ctx.chunk_size, ctx.rule, ctx.dtype = chunk_size, rule, head.weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lses = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        # backward runs outside the forward's autocast: the logits are recomputed in the forward's dtype
        head = Head.of(weight, bias, ctx.dtype)
        for rows, z, tanh in _logit_chunks(hidden, head, ctx.chunk_size, ctx.rule):
            y = targets[rows]
            g = z.sub_(lses[rows, None]).exp_().neg_()  # d logp / d z = onehot - softmax
            g[torch.arange(len(y), device=y.device), y] += 1.0
            g.mul_(grad_out[rows, None] * ctx.rule.scale)
            if tanh is not None:
                g.mul_(1.0 - tanh * tanh)
            if need_h:
                grad_h[rows] = g.to(head.weight.dtype) @ head.weight
            if need_w:
                grad_w.addmm_(g.T, hidden[rows].float())
            if need_b:
                grad_b += g.sum(0)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def token_logps(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, *,
                logit_rule: LogitRule = PLAIN, chunk_size: int | None = None) -> torch.Tensor:
    """[n] log-probability of each target under the model's logits (`logit_rule` applied to `head(hidden)`);
    differentiable in hidden and the head."""
    weight, bias = head.weight, getattr(head, "bias", None)
    return _TokenLogps.apply(hidden, weight, bias, targets, chunk_size or chunk_size_for(weight.shape[0]), logit_rule)


def _check_branches(model, position_ids: torch.Tensor | None) -> None:
    """A shared-prompt batch (positions stepping back to p > 0) is right only under sftune's varlen attention."""
    if position_ids is None or position_ids.shape[1] < 2:
        return
    steps = position_ids[:, 1:]
    if not bool(((steps != 0) & (steps <= position_ids[:, :-1])).any()):
        return
    implementation = getattr(_output_model(model).config, "_attn_implementation", None)
    if implementation != attention.NAME:
        raise ValueError(f"a shared-prompt batch of pairs needs attn_implementation={attention.NAME!r}, "
                         f"the model has {implementation!r}: collate with shared_prompt=False")


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each sequence's trained tokens [2B], their number [2B]) for a batch of pairs."""
    inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
    _check_branches(model, inputs.get("position_ids"))
    hidden, targets, _, head, rule, _ = trained_hidden_states(model, inputs)
    mask = shifted_targets(inputs) != IGNORE
    sequence = batch["sequence_ids"][:, 1:][mask]
    count = int(batch["sequence_ids"].max()) + 1
    logps = token_logps(hidden, head, targets, logit_rule=rule)
    sums = torch.zeros(count, dtype=logps.dtype, device=logps.device).index_add(0, sequence, logps)
    tokens = torch.bincount(sequence, minlength=count)
    return sums, tokens

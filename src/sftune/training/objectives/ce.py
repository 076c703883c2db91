"""Cross-entropy, the default SFT objective, as a token loss on one chunk of logits.

A token loss takes fp32 logits z [n, V] (it may overwrite them) and targets y [n] and returns the
per-token loss [n] and, when asked, its gradient with respect to z [n, V]; sftune.training.loss
applies it chunk by chunk, so no objective ever holds a [tokens x vocabulary] tensor for the batch.
"""

from __future__ import annotations

import torch


def softmax_minus_onehot(z: torch.Tensor, y: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """p - onehot(y), the gradient of -log p(y) with respect to the logits (written over z)."""
    g = z.sub_(lse[:, None]).exp_()
    g[torch.arange(len(y), device=y.device), y] -= 1.0
    return g


def token_loss(z: torch.Tensor, y: torch.Tensor, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-log p(y) per token, and p - onehot(y).

    One log_softmax, written over z, gives both: its log p(y) is the loss and its exp the gradient;
    logsumexp then subtract-and-exp went over the [n, V] chunk once more (see bench/bench_levers.py).
    """
    logp = torch.log_softmax(z, dim=-1, out=z)
    rows = torch.arange(len(y), device=y.device)
    loss = -logp[rows, y]
    if not want_grad:
        return loss, None
    g = logp.exp_()
    g[rows, y] -= 1.0
    return loss, g

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
    """-log p(y) per token, and p - onehot(y)."""
    lse = torch.logsumexp(z, dim=-1)
    loss = lse - z.gather(1, y[:, None]).squeeze(1)
    return loss, (softmax_minus_onehot(z, y, lse) if want_grad else None)

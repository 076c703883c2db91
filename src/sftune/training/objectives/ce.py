"""Cross-entropy, the default SFT objective, as a token loss on one chunk of logits.

A token loss is a plain function of fp32 logits z [n, V] and targets y [n] that returns the per-token loss
[n], differentiable in z; sftune.training.loss applies it chunk by chunk (its gradient from autograd inside
each chunk), so no objective ever holds a [tokens x vocabulary] tensor for the batch.
"""

from __future__ import annotations

import torch


def token_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log p(y) per token."""
    return torch.nn.functional.cross_entropy(z, y, reduction="none")


def loss_and_grad(z: torch.Tensor, y: torch.Tensor, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_loss` and its gradient p - onehot(y) by hand, the chunked loss's path for cross-entropy.

    One log_softmax written over z gives both: its log p(y) is the loss and its exp the gradient, in the one
    [n, V] buffer of the chunk, where autograd allocates more and is slower (bench/bench_token_losses.py).
    """
    logp = torch.log_softmax(z, dim=-1, out=z)
    rows = torch.arange(len(y), device=y.device)
    loss = -logp[rows, y]
    if not want_grad:
        return loss, None
    g = logp.exp_()
    g[rows, y] -= 1.0
    return loss, g

"""GEM ("Preserving Diversity in Supervised Fine-Tuning of Large Language Models", Li et al., ICLR 2025):
the entropy-regularised, game-theoretic objective in place of cross-entropy.

Per token, with the linear h of the authors' code: L = -sum_v q(v) (log p(y) - log p(v))
= -log p(y) + sum_v q(v) log p(v), where q = sg(softmax(z / beta)). Since q sums to one this is
sum_v q(v) z(v) - z(y) and its gradient with respect to the logits is q - onehot(y): cross-entropy's
p - onehot(y) with the model's own distribution replaced by its sharpened (beta < 1), detached copy.
Tokens of low probability get q(v) < p(v) and are pushed down less than by cross-entropy, so the
model's tail (its other plausible answers) is kept. Choice: h is linear (the issue's form; the authors also offer a log-sigmoid h);
the loss value can be below zero and is not a cross-entropy (held-out loss stays cross-entropy).
"""

from __future__ import annotations

import torch

DEFAULT_BETA = 0.7


def token_loss(z: torch.Tensor, y: torch.Tensor, *, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """sum_v q(v) z(v) - z(y) per token, q = softmax(z / beta) held constant (its gradient is q - onehot(y))."""
    q = torch.softmax(z.detach() / beta, dim=-1)
    return (q * z).sum(-1) - z.gather(1, y[:, None]).squeeze(1)

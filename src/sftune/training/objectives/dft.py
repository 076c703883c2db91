"""DFT, Dynamic Fine-Tuning ("On the Generalization of SFT: A Reinforcement Learning Perspective with
Reward Rectification", Wu et al. 2025): each token's cross-entropy scaled by its own probability,
detached, L = -sg(p(y)) log p(y).

Matches TRL's `loss_type="dft"` and LLaMA-Factory's `use_dft_loss`: the weight is exp(-CE) of the
same token, no gradient through it, summed over trained tokens and normalized like cross-entropy.
"""

from __future__ import annotations

import torch

from sftune.training.objectives.ce import softmax_minus_onehot


def token_loss(z: torch.Tensor, y: torch.Tensor, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """p(y) * (-log p(y)) per token, with p(y) held constant; gradient p(y) * (p - onehot(y))."""
    lse = torch.logsumexp(z, dim=-1)
    ce = lse - z.gather(1, y[:, None]).squeeze(1)
    weight = torch.exp(-ce)
    loss = weight * ce
    if not want_grad:
        return loss, None
    return loss, softmax_minus_onehot(z, y, lse).mul_(weight[:, None])

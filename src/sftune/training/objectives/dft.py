"""DFT, Dynamic Fine-Tuning ("On the Generalization of SFT: A Reinforcement Learning Perspective with
Reward Rectification", Wu et al. 2025): each token's cross-entropy scaled by its own probability,
detached, L = -sg(p(y)) log p(y).

Matches TRL's `loss_type="dft"` and LLaMA-Factory's `use_dft_loss`: the weight is exp(-CE) of the
same token, no gradient through it, summed over trained tokens and normalized like cross-entropy.
"""

from __future__ import annotations

import torch


def token_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p(y) * (-log p(y)) per token, p(y) held constant."""
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    return torch.exp(-ce).detach() * ce

"""The phi-weighted SFT loss of CHORD ("On-Policy RL Meets Off-Policy Experts: Harmonizing SFT and RL
via Dynamic Weighting", Zhang et al. 2025): L = -phi log p(y), phi = sg(p(y) (1 - p(y))).

phi is largest at p = 0.5 and small for tokens the model already knows (p near 1) and for tokens far
from its distribution (p near 0), so expert data nudges the policy without overwriting it. Used alone
as `train.loss: phi`, and on the expert data inside `train.loss: chord`.
"""

from __future__ import annotations

import torch


def token_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """phi * (-log p(y)) per token, phi = p(y)(1 - p(y)) held constant."""
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    p = torch.exp(-ce).detach()
    return p * (1.0 - p) * ce

"""The phi-weighted SFT loss of CHORD ("On-Policy RL Meets Off-Policy Experts: Harmonizing SFT and RL
via Dynamic Weighting", Zhang et al. 2025): L = -phi log p(y), phi = sg(p(y) (1 - p(y))).

phi is largest at p = 0.5 and small for tokens the model already knows (p near 1) and for tokens far
from its distribution (p near 0), so expert data nudges the policy without overwriting it. Used alone
as `train.loss: phi`, and on the expert data inside `train.loss: chord`.
"""

from __future__ import annotations

import torch

from sftune.training.objectives.ce import softmax_minus_onehot


def token_loss(z: torch.Tensor, y: torch.Tensor, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """phi * (-log p(y)) per token, phi = p(y)(1 - p(y)) held constant; gradient phi * (p - onehot(y))."""
    lse = torch.logsumexp(z, dim=-1)
    ce = lse - z.gather(1, y[:, None]).squeeze(1)
    p = torch.exp(-ce)
    phi = p * (1.0 - p)
    loss = phi * ce
    if not want_grad:
        return loss, None
    return loss, softmax_minus_onehot(z, y, lse).mul_(phi[:, None])

"""Training objectives, `train.loss` in the configuration: one module each.

    ce    cross-entropy (default)
    gem   GEM, entropy-regularised distribution matching (train.gem_beta)
    dft   DFT, cross-entropy scaled by the token's detached probability
    phi   cross-entropy scaled by phi = p(1 - p), detached (CHORD's expert weighting)
    chord phi on the expert data + an on-policy GRPO-style loss on the model's own samples (train.chord)

Token losses are functions (logits, targets, want_grad) -> (loss per token, gradient on the logits),
applied chunk by chunk by sftune.training.loss.linear_token_loss.
"""

from __future__ import annotations

import functools
from typing import Callable

from sftune.training.objectives import ce, dft, gem, phi

TokenLoss = Callable  # (z [n, V] fp32, y [n], want_grad) -> (loss [n], grad [n, V] or None)

TOKEN_LOSSES: dict[str, TokenLoss] = {"ce": ce.token_loss, "dft": dft.token_loss, "phi": phi.token_loss,
                                      "gem": gem.token_loss}


def token_loss_for(name: str, *, gem_beta: float = gem.DEFAULT_BETA) -> TokenLoss:
    """The token loss that `train.loss: name` trains with; chord's expert part is phi."""
    if name == "gem":
        return functools.partial(gem.token_loss, beta=gem_beta)
    if name == "chord":
        return phi.token_loss
    if name not in TOKEN_LOSSES:
        raise ValueError(f"unknown loss {name!r}; pick one of {', '.join([*TOKEN_LOSSES, 'chord'])}")
    return TOKEN_LOSSES[name]

"""Training objectives, `train.loss` in the configuration: one module each.

    ce    cross-entropy (default)
    gem   GEM, entropy-regularised distribution matching (train.gem_beta)
    dft   DFT, cross-entropy scaled by the token's detached probability
    phi   cross-entropy scaled by phi = p(1 - p), detached (CHORD's expert weighting)
    chord phi on the expert data + an on-policy GRPO-style loss on the model's own samples (train.chord)

A token loss is a plain function (logits [n, V], targets [n]) -> loss per token [n], differentiable in the
logits; sftune.training.loss.linear_token_loss applies it chunk by chunk and takes each chunk's gradient from
autograd. A new one is a short function and an entry in TOKEN_LOSSES.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sftune.config import ConfigError, TrainSection
from sftune.training.objectives import ce, chord, dft, gem, phi

TokenLoss = Callable  # (z [n, V] fp32, y [n]) -> loss [n], differentiable in z

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


@dataclass(frozen=True)
class Objective:
    """train.loss as the trainer applies it: the token loss on the data (None: cross-entropy), and for chord its
    settings (train.chord), its reward callable and the stop tokens its samples end at (chord None: off)."""

    token_loss: TokenLoss | None = None
    chord: Any = None
    chord_reward: Callable | None = None
    stop_token_ids: tuple[int, ...] = ()


def objective_for(t: TrainSection, stop_token_ids: Sequence[int]) -> Objective:
    """The Objective of the train section; `stop_token_ids` (the template's) end chord's samples."""
    token_loss = token_loss_for("ce" if t.loss == "chord" and not t.chord.phi else t.loss, gem_beta=t.gem_beta)
    if t.loss != "chord":
        return Objective(token_loss=token_loss)
    try:
        reward = chord.load_reward(t.chord.reward)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return Objective(token_loss=token_loss, chord=t.chord, chord_reward=reward, stop_token_ids=tuple(stop_token_ids))

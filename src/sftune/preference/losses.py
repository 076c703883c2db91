"""The preference losses, per pair, from the answers' summed log-probabilities and token counts.

  dpo    -log sigmoid(beta * margin), margin = (chosen - ref chosen) - (rejected - ref rejected), summed
         log-probs; with label_smoothing e: (1 - e) * that + e * -log sigmoid(-beta * margin) (cDPO)
  ipo    (margin / tokens - 1 / (2 beta))^2, on per-token (averaged) log-ratios, as TRL and the IPO authors
  simpo  -log sigmoid(beta * (avg chosen - avg rejected) - gamma), averaged log-probs, no reference
  orpo   -avg chosen - lambda * log sigmoid(log odds(chosen) - log odds(rejected)), odds = p / (1 - p) of the
         averaged log-prob p, no reference

rpo_alpha > 0 adds rpo_alpha * (-chosen / chosen tokens), the chosen answer's mean token NLL, to each pair's
loss (RPO, Pang et al. 2024, eq. 2: keeps the chosen answer likely while the margin grows). TRL 1.x spells it
loss_type ["sigmoid", "sft"]; its sft term is the token mean over the micro-batch, equal to this with one pair.

Rewards (what is logged): beta * log-ratio for dpo / ipo (TRL's), beta * average log-prob for simpo and
lambda * average log-prob for orpo (TRL's CPO / ORPO trainers').
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("dpo", "ipo", "simpo", "orpo")
NEEDS_REFERENCE = {"dpo": True, "ipo": True, "simpo": False, "orpo": False}


@dataclass
class Settings:
    """The loss and its settings (config `preference:`)."""

    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1
    rpo_alpha: float = 0.0


def _smoothed(logits: torch.Tensor, beta: float, smoothing: float) -> torch.Tensor:
    return -F.logsigmoid(beta * logits) * (1 - smoothing) - F.logsigmoid(-beta * logits) * smoothing


def pair_losses(s: Settings, chosen: torch.Tensor, rejected: torch.Tensor, chosen_tokens: torch.Tensor,
                rejected_tokens: torch.Tensor, ref_chosen: torch.Tensor | None = None,
                ref_rejected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen reward, rejected reward), each [pairs]. chosen / rejected: summed log-probs
    of each answer's trained tokens; *_tokens: how many; ref_*: the reference's summed log-probs."""
    losses, chosen_rewards, rejected_rewards = _method_losses(s, chosen, rejected, chosen_tokens, rejected_tokens,
                                                              ref_chosen, ref_rejected)
    if s.rpo_alpha:
        losses = losses - s.rpo_alpha * chosen / chosen_tokens.clamp(min=1).to(chosen.dtype)
    return losses, chosen_rewards, rejected_rewards


def _method_losses(s: Settings, chosen, rejected, chosen_tokens, rejected_tokens, ref_chosen, ref_rejected):
    """pair_losses without the RPO term."""
    if s.loss not in LOSSES:
        raise ValueError(f"unknown preference loss {s.loss!r}; use one of {', '.join(LOSSES)}")
    nc, nr = chosen_tokens.clamp(min=1).to(chosen.dtype), rejected_tokens.clamp(min=1).to(chosen.dtype)
    if s.loss in ("dpo", "ipo"):
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        if s.loss == "dpo":
            losses = _smoothed(chosen_ratio - rejected_ratio, s.beta, s.label_smoothing)
        else:
            losses = (chosen_ratio / nc - rejected_ratio / nr - 1 / (2 * s.beta)) ** 2
        return losses, s.beta * chosen_ratio.detach(), s.beta * rejected_ratio.detach()
    avg_chosen, avg_rejected = chosen / nc, rejected / nr
    if s.loss == "simpo":
        losses = _smoothed(avg_chosen - avg_rejected - s.simpo_gamma / s.beta, s.beta, s.label_smoothing)
        return losses, s.beta * avg_chosen.detach(), s.beta * avg_rejected.detach()
    # orpo: log(1 - p) = log(-expm1(log p)), exact for the averaged log-probs (< 0)
    log_odds = (avg_chosen - avg_rejected) - (torch.log(-torch.expm1(avg_chosen)) - torch.log(-torch.expm1(avg_rejected)))
    losses = -avg_chosen - s.orpo_lambda * F.logsigmoid(log_odds)
    return losses, s.orpo_lambda * avg_chosen.detach(), s.orpo_lambda * avg_rejected.detach()

"""What one evaluation task produced for one model: the score, each item's score, and sample answers.

The per-item scores are kept so the report can put a bootstrap confidence interval on every score and
on every base-versus-fine-tuned delta (items are paired: the same item for both models).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Sample:
    """One item as a reader checks it: the prompt, the model's answer, the reference, the item's score."""

    prompt: str
    answer: str
    reference: str
    score: float


@dataclass
class TaskResult:
    """One task on one model. `score` is the mean of `item_scores` unless the task says otherwise
    (e.g. corpus BLEU); `item_scores` are in item order, the same order for every model."""

    task: str
    metric: str  # what `score` is: "accuracy", "pass@1", "exact_match", "bleu", "perplexity", ...
    score: float
    item_scores: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    higher_is_better: bool = True
    general: bool = False  # a general-ability task: part of the forgetting section of the report
    details: dict[str, Any] = field(default_factory=dict)  # other metrics and facts (n, seconds, tokens/s ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskResult":
        return cls(**{**data, "samples": [Sample(**s) for s in data.get("samples", [])]})

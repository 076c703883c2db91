"""The TaskResult a benchmark returns, with the facts every benchmark reports (n, seconds, items/s)."""

from __future__ import annotations

import math
import time
from typing import Any

from sftune.evaluate.results import Sample, TaskResult


def finish(task: str, metric: str, item_scores: list[float], samples: list[Sample], started: float, *,
           general: bool, details: dict[str, Any] | None = None, score: float | None = None) -> TaskResult:
    """The result of `task`; `score` defaults to the mean of the item scores (NaN when there are none)."""
    seconds = time.perf_counter() - started
    n = len(item_scores)
    if score is None:
        score = sum(item_scores) / n if n else math.nan
    facts = {"n": n, "seconds": round(seconds, 3), "items_per_second": round(n / seconds, 3) if seconds > 0 else None}
    return TaskResult(task=task, metric=metric, score=score, item_scores=item_scores, samples=samples,
                      general=general, details={**facts, **(details or {})})

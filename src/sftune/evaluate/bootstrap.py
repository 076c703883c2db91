"""Bootstrap confidence intervals: is a score, or a base-versus-fine-tuned difference, more than noise?

Items are resampled with replacement; for a delta the same resampled items score both models (paired),
which is what makes a small but consistent gain visible. Percentile intervals, seeded: the same
scores always give the same interval.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0


def _resampled_means(columns: Sequence[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Means of each column over `resamples` resamplings of the item indices (the same ones for every column)."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    means: list[list[np.ndarray]] = [[] for _ in columns]
    chunk = max(1, 2_000_000 // max(n, 1))  # at most ~2M indices in memory at once
    for done in range(0, resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, resamples - done), n))
        for k, column in enumerate(columns):
            means[k].append(column[index].mean(axis=1))
    return [np.concatenate(m) for m in means]


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_interval(items: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                  seed: int = SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `items`; None when there are fewer than 2 items."""
    scores = np.asarray(items, dtype=np.float64)
    if len(scores) < 2:
        return None
    (means,) = _resampled_means([scores], resamples, seed)
    return _interval(means, confidence)


def paired_delta_interval(base: Sequence[float], tuned: Sequence[float], *, resamples: int = RESAMPLES,
                          confidence: float = CONFIDENCE, seed: int = SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of mean(tuned) - mean(base), the same items resampled for both.

    `base[i]` and `tuned[i]` must score the same item i. None when there are fewer than 2 items.
    """
    a, b = np.asarray(base, dtype=np.float64), np.asarray(tuned, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs the same items for both models: {len(a)} base scores and "
                         f"{len(b)} fine-tuned scores")
    if len(a) < 2:
        return None
    means_a, means_b = _resampled_means([a, b], resamples, seed)
    return _interval(means_b - means_a, confidence)


def verdict(interval: tuple[float, float] | None, higher_is_better: bool = True) -> str:
    """'better' or 'worse' when the delta's interval lies entirely on one side of 0, else 'noise'
    (also when there is no interval)."""
    if interval is None:
        return "noise"
    low, high = interval
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "noise"

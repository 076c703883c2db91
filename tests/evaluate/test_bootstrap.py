"""Bootstrap intervals against textbook cases and scipy.stats.bootstrap; the better / worse / noise verdict."""

from __future__ import annotations

import numpy as np
import pytest

from sftune.evaluate import bootstrap


def test_identical_scores_give_a_zero_interval():
    items = [1.0, 0.0, 1.0, 1.0, 0.0, 0.5] * 10
    assert bootstrap.paired_delta_interval(items, items) == (0.0, 0.0)
    assert bootstrap.verdict((0.0, 0.0)) == "noise"


def test_a_large_consistent_gain_excludes_zero_and_a_coin_flip_does_not():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.5, 200)
    gain = bootstrap.paired_delta_interval(base, base + 0.3)
    assert gain == pytest.approx((0.3, 0.3))  # every item gained exactly 0.3: no spread at all
    assert bootstrap.verdict(gain) == "better" and bootstrap.verdict(gain, higher_is_better=False) == "worse"
    flips = rng.integers(0, 2, 200).astype(float)
    other = rng.permutation(flips)  # the same mean, item by item unrelated
    low, high = bootstrap.paired_delta_interval(flips, other)
    assert low < 0 < high and bootstrap.verdict((low, high)) == "noise"


def test_pairing_sees_a_small_consistent_gain_that_unpaired_intervals_would_hide():
    """Scores that vary a lot between items but gain 0.02 on every item: the paired interval excludes 0,
    while the two models' own intervals overlap widely."""
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 100)
    tuned = base + 0.02
    low, high = bootstrap.paired_delta_interval(base, tuned)
    assert low > 0
    base_ci, tuned_ci = bootstrap.mean_interval(base), bootstrap.mean_interval(tuned)
    assert base_ci[1] > tuned_ci[0]  # overlap


def test_seeded_and_textbook_width():
    rng = np.random.default_rng(3)
    items = rng.normal(0.5, 0.1, 400)
    assert bootstrap.mean_interval(items) == bootstrap.mean_interval(items)
    low, high = bootstrap.mean_interval(items)
    # normal theory: mean +- 1.96 * sd / sqrt(n)
    half = 1.96 * items.std(ddof=1) / np.sqrt(len(items))
    assert low == pytest.approx(items.mean() - half, abs=0.002)
    assert high == pytest.approx(items.mean() + half, abs=0.002)


def test_agrees_with_scipy_paired_percentile_bootstrap():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    base = rng.integers(0, 2, 300).astype(float)
    tuned = np.where(rng.uniform(size=300) < 0.2, 1.0, base)  # ~10 points better, paired
    ours = bootstrap.paired_delta_interval(base, tuned, resamples=5000)
    theirs = stats.bootstrap((base, tuned), lambda a, b, axis: b.mean(axis=axis) - a.mean(axis=axis), paired=True,
                             vectorized=True, n_resamples=5000, confidence_level=0.95, method="percentile",
                             random_state=np.random.default_rng(0)).confidence_interval
    assert ours[0] == pytest.approx(theirs.low, abs=0.01)
    assert ours[1] == pytest.approx(theirs.high, abs=0.01)


def test_unpaired_items_are_an_error_and_one_item_has_no_interval():
    with pytest.raises(ValueError, match="same items"):
        bootstrap.paired_delta_interval([1.0, 0.0], [1.0])
    assert bootstrap.paired_delta_interval([1.0], [0.0]) is None
    assert bootstrap.verdict(None) == "noise"

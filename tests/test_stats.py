"""metrics/stats.py against hand computations on small inputs (plain Python, no numpy)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from personavec.metrics.stats import auroc, cohens_d, mean_ci, pearson


def pairwise_auroc(pos: list[float], neg: list[float]) -> float:
    """The definition: P(pos > neg) over all pairs, ties counting half."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_pearson_constructed_case() -> None:
    # x deviations -1.5 -.5 .5 1.5; y deviations -3 -1 0 4: Σdxdy = 11, Σdx² = 5, Σdy² = 26.
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(5 * 26), abs=1e-12)
    assert pearson([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 1, -1]) == pytest.approx(-1.0)
    # Deviations (-1, 0, 1) against (1, -2, 1): uncorrelated.
    assert pearson([0, 1, 2], [1, -2, 1]) == pytest.approx(0.0, abs=1e-12)


def test_pearson_undefined_and_bad_input() -> None:
    assert math.isnan(pearson([1, 2], [3, 4]))  # fewer than 3 points
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # zero variance
    assert math.isnan(pearson([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError, match="equal lengths"):
        pearson([1, 2, 3], [1, 2])


def test_mean_ci_by_hand() -> None:
    # mean 3, sample variance (4+1+0+1+4)/4 = 2.5, standard error sqrt(2.5/5) = sqrt(0.5).
    mean, low, high = mean_ci([1, 2, 3, 4, 5])
    half = 1.96 * math.sqrt(0.5)
    assert (mean, low, high) == pytest.approx((3.0, 3.0 - half, 3.0 + half), abs=1e-12)
    _, low, high = mean_ci([1, 2, 3, 4, 5], z=1.0)
    assert (low, high) == pytest.approx((3 - math.sqrt(0.5), 3 + math.sqrt(0.5)), abs=1e-12)
    mean, low, high = mean_ci([7.0])
    assert mean == 7.0 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(x) for x in mean_ci([]))


def test_auroc_with_ties_by_hand() -> None:
    # Pairs: 3>2, 3>1, 2=2 (½), 2>1, 2=2 (½), 2>1 → 5 of 6.
    assert auroc([3, 2, 2], [2, 1]) == pytest.approx(5 / 6, abs=1e-12)
    assert auroc([1, 1], [1, 1, 1]) == pytest.approx(0.5)
    assert auroc([5, 6], [1, 2]) == 1.0
    assert auroc([1, 2], [5, 6]) == 0.0
    assert math.isnan(auroc([], [1.0])) and math.isnan(auroc([1.0], []))


def test_auroc_matches_pair_counting_on_many_ties() -> None:
    rng = random.Random(0)
    for _ in range(20):
        pos = [float(rng.randint(0, 4)) for _ in range(rng.randint(1, 9))]
        neg = [float(rng.randint(0, 4)) for _ in range(rng.randint(1, 9))]
        assert auroc(pos, neg) == pytest.approx(pairwise_auroc(pos, neg), abs=1e-12)


def test_cohens_d_by_hand() -> None:
    # means 4 and 2; sample variances 4 and 1; pooled (2·4 + 2·1) / 4 = 2.5.
    assert cohens_d([2, 4, 6], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2.5), abs=1e-12)
    # Unequal sizes: means 2 and 0; variances 1 and 2/3; pooled (2·1 + 3·(2/3)) / 5 = 0.8.
    assert cohens_d([1, 2, 3], [-1, 0, 0, 1]) == pytest.approx(2 / math.sqrt(0.8), abs=1e-12)
    assert cohens_d([1, 2, 3], [2, 4, 6]) == pytest.approx(-2 / math.sqrt(2.5), abs=1e-12)
    assert math.isnan(cohens_d([1.0], [1.0, 2.0]))  # too few
    assert math.isnan(cohens_d([1, 1], [2, 2]))  # zero pooled variance

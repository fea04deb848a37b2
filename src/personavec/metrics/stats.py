"""Small statistics used in reports: AUROC, Cohen's d, Pearson r, confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half).

    Computed exactly from ranks (Mann-Whitney U). NaN when either side is empty.
    """
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    values = np.concatenate([pos, neg])
    order = values.argsort(kind="mergesort")
    ranks = np.empty_like(values)
    sorted_values = values[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def cohens_d(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Mean difference over the pooled standard deviation; NaN when undefined."""
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if pos.size < 2 or neg.size < 2:
        return float("nan")
    pooled = ((pos.size - 1) * pos.var(ddof=1) + (neg.size - 1) * neg.var(ddof=1)) / (
        pos.size + neg.size - 2
    )
    if pooled <= 0:
        return float("nan")
    return float((pos.mean() - neg.mean()) / math.sqrt(pooled))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN with fewer than 3 points or zero variance."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.size != b.size:
        raise ValueError(f"pearson needs equal lengths, got {a.size} and {b.size}")
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def mean_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """(mean, low, high): normal-approximation 95 % interval of the mean."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan")
    half = z * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half

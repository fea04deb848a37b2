"""Dataset-level statistics of ΔP and how well the cheap approximations agree with it."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from personavec.metrics.stats import mean_ci, pearson


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def describe(values: np.ndarray) -> dict[str, Any]:
    """``n``, ``mean`` with its 95 % interval (``low``, ``high``), ``std`` and percentiles."""
    kept = _finite(np.asarray(values, dtype=np.float64))
    mean, low, high = mean_ci(kept.tolist())
    out: dict[str, Any] = {"n": int(kept.size), "mean": mean, "low": low, "high": high}
    out["std"] = float(kept.std(ddof=1)) if kept.size > 1 else float("nan")
    for q in (5, 50, 95):
        out[f"p{q}"] = float(np.percentile(kept, q)) if kept.size else float("nan")
    return out


def ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks (ties broken by position)."""
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values), dtype=np.float64)
    out[order] = np.arange(len(values), dtype=np.float64)
    return out


def top_overlap(reference: np.ndarray, approx: np.ndarray, fraction: float = 0.05) -> float:
    """Share of the top ``fraction`` of samples by ``reference`` also in the top by ``approx``."""
    n = len(reference)
    if n == 0:
        return float("nan")
    k = max(1, math.ceil(fraction * n))
    top_ref = set(np.argsort(-reference, kind="stable")[:k].tolist())
    top_approx = set(np.argsort(-approx, kind="stable")[:k].tolist())
    return len(top_ref & top_approx) / k


def agreement(full: np.ndarray, approx: np.ndarray, fraction: float = 0.05) -> dict[str, float]:
    """Pearson r, Spearman ρ and top-``fraction`` overlap of ``approx`` against ``full``."""
    a = np.asarray(full, dtype=np.float64)
    b = np.asarray(approx, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    return {
        "n": int(a.size),
        "pearson": pearson(a.tolist(), b.tolist()),
        "spearman": pearson(ranks(a).tolist(), ranks(b).tolist()),
        f"top{round(fraction * 100)}_overlap": top_overlap(a, b, fraction),
    }


def subsample_estimates(
    values: np.ndarray, sizes: Sequence[int], seed: int = 0
) -> list[dict[str, Any]]:
    """Mean ΔP with its interval from seeded subsamples, against the full mean.

    Each entry: ``size``, ``mean``, ``low``, ``high``, ``error`` (subsample mean − full mean) and
    ``covers`` (whether the interval contains the full mean). The subsample is the one
    ``screen --sample SIZE --seed SEED`` would score, drawn from the scored rows.
    """
    kept = _finite(np.asarray(values, dtype=np.float64))
    full = float(kept.mean()) if kept.size else float("nan")
    out: list[dict[str, Any]] = []
    for size in sizes:
        if size >= kept.size or size < 2:
            continue
        picked = kept[sorted(random.Random(seed).sample(range(kept.size), size))]
        mean, low, high = mean_ci(picked.tolist())
        out.append(
            {
                "size": int(size),
                "mean": mean,
                "low": low,
                "high": high,
                "error": mean - full,
                "covers": bool(low <= full <= high),
            }
        )
    return out

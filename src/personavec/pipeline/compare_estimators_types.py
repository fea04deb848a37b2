"""Settings, per-cell numbers and results of ``personavec compare-estimators``.

The measures (see :mod:`.compare_estimators` for how the answers are made):

* **separation**: AUROC and Cohen's d of the projection ``ā · v̂`` (``ā`` the ``response_avg``
  readout of a held-out answer, read without the system prompt) between held-out answers the
  trait judge scores ≥ ``label_threshold`` (exhibiting) and below it (not exhibiting).
* **steering**: the judged trait change ``trait(±c) − trait(0)`` when adding ``±c ·
  typical_norm_L · v̂`` (the same added norm for every estimator), with the coherence and the
  relevance of the steered answers.
* **relevance** (0-100): ``100 · max(0, cos(e(question), e(answer)))`` with the all-MiniLM-L6-v2
  sentence embeddings — whether the answer is still about the question. The offline judges
  cannot say whether an answer follows the instruction; topical similarity is what they can
  measure. Cells report it relative to the unsteered answers' relevance.
* **harmonic** (AxBench-style, 0-1): the harmonic mean of ``a`` = the trait change in the
  steered direction / 100 (clipped to 0..1), ``b`` = coherence / 100 and ``c`` = relevance /
  baseline relevance (clipped to 0..1), computed on the cell means; 0 when any part is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def harmonic(change: float, coherence: float, relevance_ratio: float) -> float:
    """AxBench-style harmonic mean of ``change/100``, ``coherence/100`` and the relevance ratio,
    each clipped to 0..1; 0 when any part is 0, NaN when any is NaN."""
    parts = [change / 100.0, coherence / 100.0, relevance_ratio]
    if any(math.isnan(p) for p in parts):
        return float("nan")
    clipped = [min(1.0, max(0.0, p)) for p in parts]
    if min(clipped) == 0.0:
        return 0.0
    return 3.0 / sum(1.0 / p for p in clipped)


@dataclass
class SteerNumbers:
    """One steered cell (one estimator, layer and sign) against the unsteered baseline."""

    coef: float
    """Signed relative strength (fraction of the layer's typical norm)."""
    trait: float
    trait_change: float
    coherence: float
    relevance: float
    relevance_ratio: float
    harmonic: float
    n: int


@dataclass
class Separation:
    """Held-out separation of one estimator at one layer (measured at every layer)."""

    layer: int
    estimator: str
    auroc: float
    cohens_d: float


@dataclass
class EstimatorRow:
    """Everything measured for one (layer, estimator)."""

    layer: int
    estimator: str
    auroc: float
    cohens_d: float
    toward: SteerNumbers
    away: SteerNumbers
    vector_norm: float


@dataclass
class CompareResult:
    """What :func:`~personavec.pipeline.compare_estimators.compare_estimators` produced."""

    run_dir: Path
    trait: str
    layers: list[int]
    estimators: list[str]
    coef: float
    rows: list[EstimatorRow]
    cosines: dict[int, dict[str, float]]
    """layer → ``"a|b"`` → cosine between estimators ``a`` and ``b``."""
    baseline: dict[str, float]
    """Unsteered trait, coherence and relevance means."""
    heldout: dict[str, int]
    """Held-out answers: ``exhibiting``, ``not_exhibiting``, ``unscored``."""
    judge: str
    separation: list[Separation] = field(default_factory=list)
    """AUROC and Cohen's d at every layer ``0..n`` (steering is measured at ``layers`` only)."""
    settings: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = None

    def row(self, layer: int, estimator: str) -> EstimatorRow:
        for row in self.rows:
            if row.layer == layer and row.estimator == estimator:
                return row
        raise KeyError((layer, estimator))

    def recommended(self) -> dict[str, str]:
        """The estimator with the best mean over the compared layers, per use: ``monitoring``
        (AUROC, then Cohen's d) and ``steering`` (harmonic toward the trait, then its trait
        change). NaN values are skipped."""

        def mean(estimator: str, attr: str) -> float:
            values = [_value(r, attr) for r in self.rows if r.estimator == estimator]
            values = [v for v in values if not math.isnan(v)]
            return sum(values) / len(values) if values else float("-inf")

        def best(first: str, second: str) -> str:
            return max(self.estimators, key=lambda e: (mean(e, first), mean(e, second)))

        return {
            "monitoring": best("auroc", "cohens_d"),
            "steering": best("harmonic", "trait_change"),
        }


def _value(row: EstimatorRow, attr: str) -> float:
    if attr in ("harmonic", "trait_change"):
        return float(getattr(row.toward, attr))
    return float(getattr(row, attr))

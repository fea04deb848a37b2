"""Settings and results of ``personavec evaluate`` (and of every cell of a sweep).

Reports and the CLI depend on these types; :mod:`personavec.pipeline.evaluate` produces them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personavec.core.setting import SteeringSetting
from personavec.engines.generation import SamplingConfig
from personavec.judges.base import Judge
from personavec.metrics.stats import mean_ci


@dataclass(frozen=True)
class EvalSettings:
    """Sampling and judging settings shared by every cell of an evaluation or sweep."""

    questions: int | None = None
    """Held-out evaluation questions to use (the first N; default all)."""
    samples: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64
    judge: str = "contrast"
    coherence_judge: str = "heuristic"
    judge_timeout_s: float | None = None
    """Seconds to wait for each LLM-judge answer (default ``$PERSONAVEC_JUDGE_TIMEOUT`` or 120)."""
    judge_concurrency: int = 8
    """LLM-judge requests in flight at once."""
    engine: str = "hf"
    """Generation engine of the answers (``hf`` or ``vllm``); part of identities only when not
    ``hf``, so runs from before the option resume."""

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            n_samples=self.samples,
            seed=self.seed,
            batch_size=self.batch_size,
        )


@dataclass
class Stat:
    """Mean, sample standard deviation and normal 95 % interval of the mean over ``n`` scores."""

    mean: float
    std: float
    low: float
    high: float
    n: int
    unscored: int = 0

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        numbers = [float(v) for v in values if v is not None]
        mean, low, high = mean_ci(numbers)
        std = float(np.std(numbers, ddof=1)) if len(numbers) > 1 else float("nan")
        return cls(mean, std, low, high, len(numbers), len(values) - len(numbers))

    def text(self) -> str:
        if self.n == 0:
            return "n/a"
        if math.isnan(self.low):
            return f"{self.mean:.1f}"
        return f"{self.mean:.1f} [{self.low:.1f}, {self.high:.1f}]"


@dataclass
class CellResult:
    """Answers and scores of one cell, in (question, sample) order."""

    cell: SteeringSetting
    rows: list[dict[str, Any]]
    trait: Stat
    coherence: Stat
    new_tokens: int
    generation_s: float
    """Seconds spent generating in this call (0 when every answer came from the run dir)."""
    off_target: dict[str, Stat] = field(default_factory=dict)


@dataclass
class EvalResult:
    """What :func:`evaluate_steering` produced (paths are inside ``run_dir``)."""

    run_dir: Path
    trait: str
    steered: CellResult
    baseline: CellResult
    capability: dict[str, Any] | None
    judge: str
    report_path: Path

    @property
    def trait_change(self) -> float:
        return self.steered.trait.mean - self.baseline.trait.mean

    @property
    def coherence_change(self) -> float:
        return self.steered.coherence.mean - self.baseline.coherence.mean


@dataclass
class Judges:
    """The trait and coherence judges of a run, plus optional off-target trait judges."""

    trait: Judge
    coherence: Judge
    others: dict[str, Judge] = field(default_factory=dict)

    def describe(self) -> str:
        return f"trait={self.trait.identity}; coherence={self.coherence.identity}"

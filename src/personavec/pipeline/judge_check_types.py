"""The judge check's settings and results (shared by :mod:`.judge_check` and its report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

OUTPUTS = ("scores.jsonl", "summary.json", "report.md", "*.png")
Scores = list[float | None]


@dataclass(frozen=True)
class JudgeCheckConfig:
    """What a judge check runs (every field is part of the run identity)."""

    judges: tuple[str, ...] = ("contrast", "embedding")
    traits: tuple[str, ...] | None = None  # default: every trait with labelled answers
    model: str = "smollm2"
    contrast_pairs: int | None = None
    per_side: int | None = None  # use only the first N answers per trait and label
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class JudgeSummary:
    """One judge's figures; every mapping is keyed by trait name (matrix: row = answers' trait)."""

    auroc: dict[str, float]
    specificity: dict[str, float]
    matrix: dict[str, dict[str, float]]
    unscored: int = 0


@dataclass
class JudgeCheckResult:
    traits: list[str]
    summaries: dict[str, JudgeSummary]
    run_dir: Path
    files: list[Path] = field(default_factory=list)

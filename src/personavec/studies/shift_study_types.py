"""The shift study's settings and per-model records (shared by the study and its report)."""

from __future__ import annotations

from dataclasses import dataclass, field

from personavec.errors import PersonavecError
from personavec.studies.common import StudyEvaluation
from personavec.training.dataset import LEVELS


@dataclass(frozen=True, kw_only=True)
class StudySettings(StudyEvaluation):
    """What the study builds, trains and measures (part of the study's identity); the held-out
    questions of each trait are also the prompts of the shift."""

    traits: tuple[str, ...]
    levels: tuple[str, ...] = LEVELS
    n: int = 150
    """Rows per dataset."""
    build_max_new_tokens: int = 64
    samples: int = 2

    def __post_init__(self) -> None:
        if not self.traits:
            raise PersonavecError("pass at least one trait, e.g. --traits evil")
        unknown = [lvl for lvl in self.levels if lvl not in LEVELS]
        if unknown or not self.levels:
            raise PersonavecError(f"unknown levels {unknown}; use {', '.join(LEVELS)}")


@dataclass
class ModelRecord:
    """One evaluated model (a finetune, or the base with ``dataset`` None).

    ``key`` is the hash of what the record was computed from (its trait, level and dataset
    content, :func:`personavec.runs.rows.record_key`); the record and its finetune and answers
    are stored under ``NAME-KEY``, so a changed dataset is never matched with an old record.
    """

    name: str
    dataset: str | None
    level: str | None
    rows: int
    train_loss: float | None
    trait: dict[str, float]
    coherence: dict[str, float]
    shift: dict[str, float]
    shift_per_layer: dict[str, list[float]] = field(default_factory=dict)
    same_data_as: str | None = None
    """Another finetune whose dataset is byte-identical (its model and numbers are reused;
    the correlations count the pair once)."""
    key: str = ""
    dataset_sha256: str | None = None

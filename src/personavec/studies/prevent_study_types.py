"""The prevention study's settings, inputs and per-variant records (shared by the study and its
report)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from personavec.core.models import LoadedModel
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.metrics.mc_question import MCQuestion
from personavec.pipeline.evaluate import EvalSettings, Judges
from personavec.runs.identity import content_sha256
from personavec.studies.common import Log, StudyEvaluation
from personavec.training.chat_data import ChatRow
from personavec.training.finetune import FinetuneConfig


@dataclass(frozen=True, kw_only=True)
class StudySettings(StudyEvaluation):
    """What the study trains and measures (part of the study's identity).

    ``coefs`` are the preventative coefficients α (raw, or fractions of the layer's typical norm
    with ``relative``); ``posthoc_coefs`` the inference-time subtraction strengths (default: the
    same grid); ``penalty_weights`` the λ of the projection penalty (empty: none).
    """

    coefs: tuple[float, ...] = (1.0, 2.0, 4.0)
    posthoc_coefs: tuple[float, ...] | None = None
    penalty_weights: tuple[float, ...] = (1.0,)
    ablate: bool = True
    layer: int | None = None
    relative: bool = False
    positions: str = "all"
    mc_questions: int | None = None

    def __post_init__(self) -> None:
        values = (*self.coefs, *(self.posthoc_coefs or ()), *self.penalty_weights)
        if not all(math.isfinite(v) for v in values):
            raise PersonavecError("coefficients and penalty weights must be finite numbers")
        if any(c <= 0 for c in (*self.coefs, *(self.posthoc_coefs or ()))):
            raise PersonavecError("coefficients must be > 0 (the plain finetune is always run)")
        if any(w < 0 for w in self.penalty_weights):
            raise PersonavecError("penalty weights must be >= 0")

    def identity(self, layer: int) -> dict[str, Any]:
        """Every setting as an identity key; the layer resolved, the unit spelled out."""
        values = {k: v for k, v in asdict(self).items() if k not in ("layer", "relative")}
        return {**values, "layer": layer, "unit": "relative" if self.relative else "raw"}


@dataclass
class VariantRecord:
    """The measurements of one variant (``coef``: α for prevent/posthoc, λ for penalty).

    ``key`` is the hash of the settings it was computed under (method, coefficient, layer, unit,
    positions; :func:`personavec.runs.rows.record_key`); its files are stored under ``NAME-KEY``.
    """

    name: str
    method: str
    coef: float | None
    trait: float
    coherence: float
    mc_accuracy: float
    perplexity: float
    shift: float | None
    train_loss: float | None = None
    n_answers: int = 0
    key: str = ""


@dataclass
class Capability:
    """The capability probes: multiple-choice questions and held-out text."""

    mc: list[MCQuestion]
    text: str
    mc_source: str
    text_source: str

    def identity(self) -> dict[str, str]:
        """Content hashes of the MC questions and the held-out text (their sources can change)."""
        return {
            "mc_sha256": content_sha256([asdict(q) for q in self.mc]),
            "heldout_text_sha256": content_sha256(self.text.encode()),
        }


@dataclass
class StudyContext:
    """Everything a running study reads: inputs, settings, where it writes, how it reports."""

    base: LoadedModel
    vector: PersonaVector
    layer: int
    rows: list[ChatRow]
    dataset: Path
    settings: StudySettings
    config: FinetuneConfig
    capability: Capability
    run_dir: Path
    log: Log
    show_progress: bool
    evaluation: tuple[EvalSettings, list[str], Judges] | None = None
    base_means: dict[str, torch.Tensor] = field(default_factory=dict)

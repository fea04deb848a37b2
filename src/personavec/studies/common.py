"""What every study shares: the base model's identity, the evaluation and the finetune settings.

A study compares finetuned models with their base, so every finetune is loaded like the base
(``load_finetuned(path, like=base)``: same dtype and device; a bf16 finetune against an fp32
base would measure precision, not finetuning); both are part of the study's identity, recorded
in its ``config.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from personavec.core.models import LoadedModel
from personavec.judges.base import Judge
from personavec.judges.factory import make_judge
from personavec.pipeline.evaluate import EvalSettings, Judges, prepare_evaluation
from personavec.training.finetune import FinetuneConfig
from personavec.training.finetuned import dtype_name
from personavec.traits.library import load_trait

Log = Callable[[str], None]
"""Where a study reports what it is doing (one line per call)."""


@dataclass(frozen=True, kw_only=True)
class StudyEvaluation:
    """How every model of a study is evaluated (the fields each study's settings share):
    ``questions`` held-out questions × ``samples`` answers of ≤ ``max_new_tokens`` tokens,
    judged by ``judge`` (a contrast judge with ``judge_pairs`` instruction pairs when given; None:
    all) and ``coherence_judge``; ``seed`` for sampling (and the finetunes)."""

    questions: int = 10
    samples: int = 1
    max_new_tokens: int = 48
    judge: str = "contrast"
    judge_pairs: int | None = None
    coherence_judge: str = "heuristic"
    seed: int = 0


def study_evaluation(
    base: LoadedModel, trait: str, s: StudyEvaluation
) -> tuple[EvalSettings, list[str], Judges]:
    """The evaluation of ``trait`` every model of a study gets: held-out questions and judges
    built on the *base* model (so every finetune is scored by the same judge); a contrast judge
    with ``judge_pairs`` instruction pairs when given."""
    spec = load_trait(trait)
    judge: str | Judge = s.judge
    if s.judge.startswith("contrast") and s.judge_pairs is not None:
        judge = make_judge(
            s.judge, aspect="trait", trait=spec, loaded_model=base, contrast_pairs=s.judge_pairs
        )
    return prepare_evaluation(
        base,
        spec,
        judge,
        questions=s.questions,
        samples=s.samples,
        max_new_tokens=s.max_new_tokens,
        seed=s.seed,
        coherence_judge=s.coherence_judge,
    )


def base_identity(base: LoadedModel) -> dict[str, Any]:
    """The identity keys of the base model known before hashing its weights: its id, dtype and
    device (the weights' hash is passed to ``Run.start`` as ``weights_sha256``)."""
    return {"base": base.model_id, "dtype": dtype_name(base.model), "device": str(base.device)}


def study_finetune_config(
    *, seed: int, lr: float | None = None, epochs: float | None = None, paper: bool = False
) -> FinetuneConfig:
    """The finetune settings of a study: the defaults (or the paper's) with ``lr`` and ``epochs``
    when given (``None``: the default; ``0`` is refused by :class:`FinetuneConfig`, it is no
    longer read as "the default")."""
    extra: dict[str, Any] = {
        k: v for k, v in {"learning_rate": lr, "epochs": epochs}.items() if v is not None
    }
    return FinetuneConfig.paper(seed=seed, **extra) if paper else FinetuneConfig(seed=seed, **extra)

"""``personavec evaluate``: how much a steering setting moves a trait, and what it costs.

A *cell* is one :class:`~personavec.core.setting.SteeringSetting` (a baseline is the setting with
coefficient 0). Evaluating a cell answers the trait's held-out ``evaluation_questions``
(``samples`` answers each, per-sample seeds keyed by the question, so every cell and the
unsteered baseline see the same questions with the same sampling noise), judges trait expression
and coherence (0-100, cached in ``judgments.sqlite``) and summarises them as mean, standard
deviation and 95 % interval, next to the unsteered baseline.

Run directory (resumable; every write is atomic or an fsynced JSONL append):

* ``answers.jsonl`` — one row per generated answer, tagged with its cell key (a hash of
  everything that changes the answer: model weights, the vector rows used, layers,
  coefficient, positions, unit and sampling settings). A re-run reuses every cell already there,
  so the baseline is generated once per run directory and settings.
* ``judgments.sqlite`` — judge cache; ``table.jsonl`` — the scored rows of this evaluation;
  ``report.md`` and ``summary.json``.

Off-target traits (``other_traits``) re-judge the same steered and baseline answers with each
other trait's judge, so a user sees what else moved. ``mc_file`` adds multiple-choice accuracy
with and without steering (capability cost).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.errors import PersonavecError
from personavec.judges.base import Judge
from personavec.metrics.capability import Scoring
from personavec.pipeline.evaluate_cells import (
    make_judges,
    run_cells,
)
from personavec.pipeline.evaluate_report import write_evaluation
from personavec.pipeline.evaluate_types import (
    EvalResult,
    EvalSettings,
    Judges,
)
from personavec.runs.identity import content_sha256, file_sha256, weights_sha256
from personavec.runs.run import open_run
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec

# ---- validation -----------------------------------------------------------------------------


def evaluation_questions(trait: TraitSpec, n: int | None) -> list[str]:
    """The first ``n`` held-out evaluation questions (all when ``n`` is None)."""
    if n is not None and n < 1:
        raise PersonavecError(f"--questions must be at least 1, got {n}")
    questions = trait.evaluation_questions[: n or None]
    if not questions:
        raise PersonavecError(f"trait {trait.name!r} has no evaluation questions; add some")
    return questions


# ---- the run directory ----------------------------------------------------------------------

EVAL_OUTPUTS = ("answers.jsonl", "table.jsonl", "summary.json", "report.md", "report.html", "*.png")
"""Files of an evaluate or sweep run tied to its identity (``judgments.sqlite`` stays)."""
_ACCESS_FIELDS = ("judge_timeout_s", "judge_concurrency")


@contextlib.contextmanager
def open_evaluation(
    out: str | Path,
    loaded: LoadedModel,
    spec: TraitSpec,
    settings: EvalSettings,
    questions: Sequence[str],
    *,
    overwrite: bool,
    **settings_identity: Any,
) -> Iterator[Path]:
    """Open (lock, compare, resume / refuse / start afresh) an evaluate or sweep run directory.

    Its identity: the trait's content, the questions, every sampling and judging setting, the
    model's weights and the command's own ``settings_identity`` (the steering setting, grid, …).
    """
    identity = {
        "trait_sha256": content_sha256(spec.model_dump(mode="json")),
        "questions": list(questions),
        "settings": {
            k: v
            for k, v in asdict(settings).items()
            if k not in _ACCESS_FIELDS and (k, v) != ("engine", "hf")
        },
        **settings_identity,
    }
    with open_run(out, identity, outputs=EVAL_OUTPUTS, overwrite=overwrite) as run:
        run.start(weights_sha256=weights_sha256(loaded.model))
        yield run.dir


# ---- evaluate -------------------------------------------------------------------------------


def prepare_evaluation(
    loaded: LoadedModel,
    spec: TraitSpec,
    judge: str | Judge,
    *,
    other_traits: Sequence[str] = (),
    **settings_fields: Any,
) -> tuple[EvalSettings, list[str], Judges]:
    """Validated settings, the held-out questions and the judges (shared by evaluate and sweep).

    ``judge`` is a spec string or a ready judge; ``settings_fields`` are :class:`EvalSettings`
    fields (questions, samples, max_new_tokens, temperature, seed, coherence_judge,
    judge_timeout_s, judge_concurrency).
    """
    settings = EvalSettings(
        judge=judge if isinstance(judge, str) else judge.identity, **settings_fields
    )
    settings.sampling()  # validate before anything is generated
    questions = evaluation_questions(spec, settings.questions)
    judges = make_judges(
        loaded, spec, settings, other_traits, trait_judge=None if isinstance(judge, str) else judge
    )
    return settings, questions, judges


def evaluate_steering(
    loaded: LoadedModel,
    trait: str | TraitSpec,
    setting: SteeringSetting,
    *,
    questions: int | None = None,
    samples: int = 1,
    judge: str | Judge = "contrast",
    coherence_judge: str = "heuristic",
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    other_traits: Sequence[str] = (),
    mc_file: str | Path | None = None,
    mc_scoring: Scoring = "letter",
    run_dir: str | Path,
    overwrite: bool = False,
    force: bool = False,
    show_progress: bool = True,
    judge_timeout_s: float | None = None,
    judge_concurrency: int = 8,
    engine: str = "hf",
) -> EvalResult:
    """Steer with ``setting`` on held-out questions; compare with the unsteered baseline.

    The setting is validated when built (:meth:`SteeringSetting.from_vector`); the model fit,
    judges and files are checked here before anything is generated or written. ``mc_scoring``
    is how ``mc_file`` is scored (``"letter"`` or ``"text"``; see
    :mod:`personavec.metrics.capability`).
    """
    from personavec.metrics.capability import load_mc_file

    spec = trait if isinstance(trait, TraitSpec) else load_trait(trait)
    setting.check_compatible(loaded.model, force=force)
    mc_questions = load_mc_file(mc_file) if mc_file is not None else None
    settings, question_list, judges = prepare_evaluation(
        loaded,
        spec,
        judge,
        other_traits=other_traits,
        questions=questions,
        samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        coherence_judge=coherence_judge,
        judge_timeout_s=judge_timeout_s,
        judge_concurrency=judge_concurrency,
        engine=engine,
    )
    run_identity = {
        "setting": setting.identity(),
        "other_traits": list(other_traits),
        "mc_file_sha256": file_sha256(mc_file) if mc_file is not None else None,
        "mc_scoring": mc_scoring,
    }
    with open_evaluation(
        run_dir, loaded, spec, settings, question_list, overwrite=overwrite, **run_identity
    ) as out:
        baseline, steered = run_cells(
            loaded,
            [setting.baseline(), setting],
            question_list,
            settings,
            judges,
            out,
            show_progress=show_progress,
        )
        capability = None
        if mc_questions is not None:
            capability = _capability(loaded, setting, mc_questions, str(mc_file), mc_scoring)
        result = EvalResult(
            out, spec.name, steered, baseline, capability, judges.describe(), out / "report.md"
        )
        write_evaluation(result, settings)
    return result


def _capability(
    loaded: LoadedModel,
    setting: SteeringSetting,
    mc_questions: Any,
    mc_file: str,
    scoring: Scoring,
) -> dict[str, Any]:
    """Multiple-choice accuracy without and with ``setting``."""
    from personavec.metrics.capability import evaluate_multiple_choice

    plain = evaluate_multiple_choice(loaded, mc_questions, scoring=scoring)
    with setting.apply(loaded.model):
        moved = evaluate_multiple_choice(loaded, mc_questions, scoring=scoring)
    return {
        "file": mc_file,
        "scoring": scoring,
        "questions": len(mc_questions),
        "baseline_accuracy": plain.accuracy,
        "steered_accuracy": moved.accuracy,
        "change": moved.accuracy - plain.accuracy,
    }

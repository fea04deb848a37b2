"""Does a trait judge measure its trait? Held-out AUROC and a cross-trait matrix.

For every judge named in the check and every trait ``Y`` it covers, the judge of ``Y`` scores
every labelled answer of every trait (:mod:`personavec.judges.labelled`: written to show a
trait, or not; disjoint from the trait files' examples that calibrate the judges). From those
scores:

* **AUROC** of ``Y``: answers written to show ``Y`` (label 1) against answers of ``Y``'s
  questions written not to (label 0), both under ``Y``'s judge. 1 = perfect, 0.5 = chance.
* **Cross-trait matrix** ``M[X][Y]``: mean 0-100 score that ``Y``'s judge gives answers written
  to show ``X``. A judge that responds to its trait is high on the diagonal only; one that
  responds to "unusual text" is high across its column.
* **Specificity** of ``Y``: AUROC of answers written to show ``Y`` against answers written to
  show the *other* traits, under ``Y``'s judge.

Scores are cached in ``judgments.sqlite`` (keyed by judge identity), so an interrupted check
resumes and a second judge or trait adds only its own work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from personavec.errors import PersonavecError
from personavec.judges.base import Judge, JudgeItem
from personavec.judges.labelled import LabelledAnswer, labelled_sha256, load_labelled
from personavec.metrics.stats import auroc
from personavec.pipeline.judge_check_report import write_report
from personavec.pipeline.judge_check_types import (
    OUTPUTS,
    JudgeCheckConfig,
    JudgeCheckResult,
    JudgeSummary,
    Scores,
)
from personavec.runs import content_sha256, open_run, weights_sha256
from personavec.runs.judging import judge_items
from personavec.traits.library import load_trait

#: Judge names the check knows (besides ``openai:MODEL`` / ``anthropic:MODEL``): spec + options.
OFFLINE_JUDGES: dict[str, tuple[str, dict[str, Any]]] = {
    "contrast": ("contrast", {}),
    "contrast-plain": ("contrast-plain", {}),
    "contrast-neutral": ("contrast-plain", {"contrast_reference": "neutral"}),
    "embedding": ("embedding", {}),
}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarise(
    answers: Sequence[LabelledAnswer], scores: Mapping[str, Scores], traits: Sequence[str]
) -> JudgeSummary:
    """AUROC, specificity and cross-trait matrix of one judge.

    Args:
        answers: the labelled answers, in the order of each score list.
        scores: trait ``Y`` → the score ``Y``'s judge gave each answer (``None``: no verdict,
            left out).
        traits: the traits, in matrix order.
    """

    def picked(judge_trait: str, keep: Any) -> list[float]:
        return [
            s
            for a, s in zip(answers, scores[judge_trait], strict=True)
            if keep(a) and s is not None
        ]

    result = JudgeSummary(auroc={}, specificity={}, matrix={})
    for y in traits:
        shows = picked(y, lambda a, y=y: a.trait == y and a.label == 1)
        result.auroc[y] = auroc(shows, picked(y, lambda a, y=y: a.trait == y and a.label == 0))
        others = picked(y, lambda a, y=y: a.trait != y and a.label == 1)
        result.specificity[y] = auroc(shows, others)
    for x in traits:
        result.matrix[x] = {
            y: _mean(picked(y, lambda a, x=x: a.trait == x and a.label == 1)) for y in traits
        }
    result.unscored = sum(s is None for y in traits for s in scores[y])
    return result


def _check_judges(names: Sequence[str]) -> None:
    for name in names:
        if name not in OFFLINE_JUDGES and name.partition(":")[0] not in ("openai", "anthropic"):
            known = ", ".join([*OFFLINE_JUDGES, "openai:MODEL", "anthropic:MODEL"])
            raise PersonavecError(f"unknown judge {name!r} for judge-check; use {known}")


def _answers(config: JudgeCheckConfig) -> tuple[list[str], list[LabelledAnswer]]:
    rows = load_labelled(config.traits)
    traits = list(dict.fromkeys(r.trait for r in rows))
    if config.per_side is not None:
        if config.per_side < 1:
            raise PersonavecError(f"--per-side must be at least 1, got {config.per_side}")
        count: dict[tuple[str, int], int] = {}
        kept = []
        for row in rows:
            key = (row.trait, row.label)
            count[key] = count.get(key, 0) + 1
            if count[key] <= config.per_side:
                kept.append(row)
        rows = kept
    return traits, rows


def _identity(config: JudgeCheckConfig, traits: list[str], rows: list[LabelledAnswer]) -> dict:
    return {
        "judges": list(config.judges),
        "traits": traits,
        "model": config.model,
        "contrast_pairs": config.contrast_pairs,
        "per_side": config.per_side,
        "device": config.device,
        "dtype": config.dtype,
        "labelled_sha256": labelled_sha256(rows),
        "trait_sha256": [content_sha256(load_trait(t).model_dump(mode="json")) for t in traits],
    }


def make_check_judge(
    name: str, trait: str, config: JudgeCheckConfig, loaded: Any, access: Mapping[str, Any]
) -> Judge:
    """The judge called ``name`` in a check, for ``trait``."""
    from personavec.judges.factory import make_judge

    spec, options = OFFLINE_JUDGES.get(name, (name, {}))
    if spec.startswith("contrast"):
        options = {**options, "contrast_pairs": config.contrast_pairs}
    if ":" in spec:
        options = {**options, **access}
    return make_judge(spec, aspect="trait", trait=load_trait(trait), loaded_model=loaded, **options)


def _scores(
    name: str,
    trait: str,
    config: JudgeCheckConfig,
    loaded: Any,
    access: Mapping[str, Any],
    items: Sequence[JudgeItem],
    run: Any,
    show_progress: bool,
) -> Scores:
    """``trait``'s judge ``name`` on every item (cached); all ``None`` when it cannot calibrate."""
    from personavec.judges.contrast import JudgeCalibrationError

    judge = make_check_judge(name, trait, config, loaded, access)
    try:
        found = judge_items(
            items,
            {f"{name} {trait}": judge},
            run.path("judgments.sqlite"),
            show_progress=show_progress,
        )
    except JudgeCalibrationError:
        return [None] * len(items)
    return found[f"{name} {trait}"]


def judge_check(
    config: JudgeCheckConfig,
    run_dir: Path,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
    loaded: Any = None,
    access: Mapping[str, Any] | None = None,
) -> JudgeCheckResult:
    """Score the labelled answers with every judge of every trait; write the report.

    Args:
        config: judges, traits, model and limits (see :class:`JudgeCheckConfig`).
        run_dir: the run directory (resumable; judgments cached in ``judgments.sqlite``).
        loaded: the judging model for ``contrast`` judges (loaded from ``config`` when needed
            and not given).
        access: ``base_url`` / ``api_key`` / ``timeout_s`` / ``concurrency`` for LLM judges.
    """
    _check_judges(config.judges)
    traits, rows = _answers(config)
    items = [JudgeItem(r.question, r.answer) for r in rows]
    with open_run(
        run_dir, _identity(config, traits, rows), outputs=OUTPUTS, overwrite=overwrite
    ) as run:
        needs_model = any(
            OFFLINE_JUDGES.get(n, ("",))[0].startswith("contrast") for n in config.judges
        )
        late: dict[str, Any] = {}
        if needs_model:
            if loaded is None:
                from personavec.core.models import load_model

                loaded = load_model(config.model, device=config.device, dtype=config.dtype)
            late["weights_sha256"] = weights_sha256(loaded.model)
        run.start(**late)
        all_scores: dict[str, dict[str, Scores]] = {}
        for name in config.judges:
            all_scores[name] = {
                t: _scores(name, t, config, loaded, access or {}, items, run, show_progress)
                for t in traits
            }
        summaries = {name: summarise(rows, all_scores[name], traits) for name in config.judges}
        files = write_report(run.dir, rows, traits, all_scores, summaries)
    return JudgeCheckResult(traits, summaries, run_dir, files)

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
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from personavec.core.models import LoadedModel, chat_messages
from personavec.core.setting import SteeringSetting
from personavec.engines.generation import GenerationRequest, HFEngine
from personavec.errors import PersonavecError
from personavec.judges.base import Aspect, Judge, JudgeItem
from personavec.judges.factory import make_judge
from personavec.metrics.capability import Scoring
from personavec.pipeline.evaluate_report import write_evaluation
from personavec.pipeline.evaluate_types import (
    CellResult,
    EvalResult,
    EvalSettings,
    Judges,
    Stat,
)
from personavec.progress import stage
from personavec.runs.identity import content_sha256, file_sha256, weights_sha256
from personavec.runs.judging import judge_items
from personavec.runs.rows import Row, resumable_rows
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


# ---- generation -----------------------------------------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cell_key(
    loaded: LoadedModel,
    cell: SteeringSetting,
    settings: EvalSettings,
    questions: Sequence[str],
) -> str:
    """Hash of everything that changes the answers of ``cell`` (not the judges)."""
    identity: dict[str, Any] = {
        "weights": weights_sha256(loaded.model),
        "questions": list(questions),
        "samples": settings.samples,
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "seed": settings.seed,
    }
    identity.update(cell.identity())
    return _digest(identity)


def _answer_row(key: str, cell: SteeringSetting, index: int, question: str, g: Any) -> Row:
    return {
        "cell_key": key,
        "cell": cell.label(),
        "layers": list(cell.layers),
        "coef": cell.coef,
        "positions": cell.positions,
        "relative": cell.unit == "relative",
        "op": cell.op,
        "question_index": index,
        "sample": g.sample_index,
        "question": question,
        "answer": g.response_text.strip(),
        "n_tokens": len(g.response_token_ids),
        "finish_reason": g.finish_reason,
    }


def generate_cell(
    loaded: LoadedModel,
    cell: SteeringSetting,
    questions: Sequence[str],
    settings: EvalSettings,
    answers_path: Path,
) -> tuple[list[Row], int, float]:
    """Answers of one cell: reused from ``answers_path``, the missing ones generated and appended.

    Each question's random stream is keyed by its index (``q{index}``), so answers do not depend
    on which questions are generated together. Returns ``(rows, new_tokens_generated_now,
    seconds_generating_now)``.
    """
    key = cell_key(loaded, cell, settings, questions)
    spent = {"tokens": 0, "seconds": 0.0}

    def produce(chunk: list[int]) -> list[Row]:
        requests = [GenerationRequest(chat_messages(questions[q]), f"q{q}") for q in chunk]
        start = time.perf_counter()
        with cell.apply(loaded.model):
            generations = HFEngine(loaded).generate(requests, settings.sampling())
        spent["seconds"] += time.perf_counter() - start
        spent["tokens"] += sum(len(g.response_token_ids) for g in generations)
        return [
            _answer_row(key, cell, chunk[g.request_index], questions[chunk[g.request_index]], g)
            for g in generations
        ]

    rows = resumable_rows(
        answers_path,
        list(range(len(questions))),
        row_keys=lambda q: [(q, sample) for sample in range(settings.samples)],
        produce=produce,
        chunk_size=max(1, settings.batch_size // settings.samples),
        label=f"generating {cell.label()}",
        show_progress=False,
        key_of=lambda row: (row["question_index"], row["sample"]),
        belongs=lambda row: row.get("cell_key") == key,
    )
    return [dict(row) for row in rows], int(spent["tokens"]), float(spent["seconds"])


# ---- judging --------------------------------------------------------------------------------


def make_judges(
    loaded: LoadedModel,
    trait: TraitSpec,
    settings: EvalSettings,
    other_traits: Sequence[str] = (),
    other_judge: str = "embedding",
    *,
    trait_judge: Judge | None = None,
) -> Judges:
    """Build the judges (one-line errors for unknown specs or traits).

    ``trait_judge`` replaces the one named by ``settings.judge`` (e.g. a ``ContrastJudge`` with
    fewer instruction pairs).
    """

    def judge_for(spec: str, aspect: Aspect, about: TraitSpec) -> Judge:
        return make_judge(
            spec,
            aspect=aspect,
            trait=about,
            loaded_model=loaded,
            timeout_s=settings.judge_timeout_s,
            concurrency=settings.judge_concurrency,
        )

    others: dict[str, Judge] = {}
    for name in other_traits:
        other = load_trait(name)
        if other.name == trait.name:
            continue
        others[other.name] = judge_for(other_judge, "trait", other)
    return Judges(
        trait_judge or judge_for(settings.judge, "trait", trait),
        judge_for(settings.coherence_judge, "coherence", trait),
        others,
    )


def judge_rows(
    rows: list[dict[str, Any]], judges: Judges, cache_path: Path, *, show_progress: bool = False
) -> None:
    """Add ``trait``, ``coherence`` and ``other.<trait>`` scores to ``rows`` (cached)."""
    items = [JudgeItem(r["question"], r["answer"]) for r in rows]
    named = {"trait": judges.trait, "coherence": judges.coherence}
    named.update({f"other.{name}": judge for name, judge in judges.others.items()})
    scores = judge_items(items, named, cache_path, show_progress=show_progress, chunk_size=64)
    for column, values in scores.items():
        for row, score in zip(rows, values, strict=True):
            row[column] = score


def summarise_cell(
    cell: SteeringSetting, rows: list[dict[str, Any]], tokens: int, seconds: float
) -> CellResult:
    others = sorted({k for row in rows for k in row if k.startswith("other.")})
    return CellResult(
        cell,
        rows,
        Stat.of([r.get("trait") for r in rows]),
        Stat.of([r.get("coherence") for r in rows]),
        tokens,
        seconds,
        {k.removeprefix("other."): Stat.of([r.get(k) for r in rows]) for k in others},
    )


def run_cells(
    loaded: LoadedModel,
    cells: Sequence[SteeringSetting],
    questions: Sequence[str],
    settings: EvalSettings,
    judges: Judges,
    run_dir: Path,
    *,
    show_progress: bool = True,
) -> list[CellResult]:
    """Generate (or reuse) and judge every cell; the model is never reloaded."""
    run_dir.mkdir(parents=True, exist_ok=True)
    generated: list[tuple[SteeringSetting, list[dict[str, Any]], int, float]] = []
    with stage("generating", len(cells), enabled=show_progress) as advance:
        for index, cell in enumerate(cells):
            rows, tokens, seconds = generate_cell(
                loaded, cell, questions, settings, run_dir / "answers.jsonl"
            )
            generated.append((cell, rows, tokens, seconds))
            advance(index + 1)
    everything = [row for _, rows, _, _ in generated for row in rows]
    judge_rows(everything, judges, run_dir / "judgments.sqlite", show_progress=show_progress)
    return [summarise_cell(cell, rows, t, s) for cell, rows, t, s in generated]


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
        "settings": {k: v for k, v in asdict(settings).items() if k not in _ACCESS_FIELDS},
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

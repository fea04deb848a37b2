"""Evaluation cells: answer held-out questions under one steering setting, judge, summarise.

A *cell* is one :class:`~personavec.core.setting.SteeringSetting` (coefficient 0 is the unsteered
baseline). Its answers are rows of ``answers.jsonl`` tagged with the cell key (a hash of
everything that changes them), reused on a rerun; :func:`run_cells` generates and judges a list
of cells without reloading the model. ``evaluate``, ``sweep`` and the studies build on this.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personavec.core.models import LoadedModel, chat_messages
from personavec.core.setting import SteeringSetting
from personavec.engines.factory import open_engine
from personavec.engines.generation import GenerationRequest
from personavec.judges.base import Aspect, Judge, JudgeItem
from personavec.judges.factory import make_judge
from personavec.pipeline.evaluate_types import CellResult, EvalSettings, Judges, Stat
from personavec.progress import stage
from personavec.runs.identity import weights_sha256
from personavec.runs.judging import judge_items
from personavec.runs.rows import Row, resumable_rows
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec

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
    if settings.engine != "hf":
        identity["engine"] = settings.engine
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
        with open_engine(settings.engine, loaded, cell) as engine:
            generations = engine.generate(requests, settings.sampling())
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

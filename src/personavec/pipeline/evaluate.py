"""``personavec evaluate``: how much a steering setting moves a trait, and what it costs.

A *cell* is one :class:`~personavec.core.setting.SteeringSetting` (a baseline is the setting with
coefficient 0). Evaluating a cell answers the trait's held-out ``evaluation_questions``
(``samples`` answers each, per-sample seeds keyed by the question, so every cell and the
unsteered baseline see the same questions with the same sampling noise), judges trait expression
and coherence (0-100, cached in ``judgments.sqlite``) and summarises them as mean, standard
deviation and 95 % interval, next to the unsteered baseline.

Run directory (resumable; every write is atomic or an fsynced JSONL append):

* ``answers.jsonl`` — one row per generated answer, tagged with its cell key (a hash of
  everything that changes the answer: model fingerprint, the vector rows used, layers,
  coefficient, positions, unit and sampling settings). A re-run reuses every cell already there,
  so the baseline is generated once per run directory and settings.
* ``judgments.sqlite`` — judge cache; ``table.jsonl`` — the scored rows of this evaluation;
  ``report.md`` and ``summary.json``.

Off-target traits (``other_traits``) re-judge the same steered and baseline answers with each
other trait's judge, so a user sees what else moved. ``mc_file`` adds multiple-choice accuracy
with and without steering (capability cost).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personavec.core.models import LoadedModel, chat_messages
from personavec.core.setting import SteeringSetting
from personavec.core.vector import config_fingerprint
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import PersonavecError
from personavec.judges.base import Judge, JudgeItem
from personavec.judges.cache import CachedJudge, JudgmentCache
from personavec.judges.factory import make_judge
from personavec.metrics.stats import mean_ci
from personavec.progress import stage
from personavec.store import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec


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
        "model": config_fingerprint(loaded.model.config),
        "questions": list(questions),
        "samples": settings.samples,
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "seed": settings.seed,
    }
    identity.update(cell.identity())
    return _digest(identity)


def _answer_row(key: str, cell: SteeringSetting, question: str, g: Any) -> dict[str, Any]:
    return {
        "cell_key": key,
        "cell": cell.label(),
        "layers": list(cell.layers),
        "coef": cell.coef,
        "positions": cell.positions,
        "relative": cell.unit == "relative",
        "op": cell.op,
        "question_index": g.request_index,
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
) -> tuple[list[dict[str, Any]], int, float]:
    """Answers of one cell: from ``answers_path`` when present, else generated in one batch.

    Returns ``(rows, new_tokens_generated_now, seconds_generating_now)``.
    """
    key = cell_key(loaded, cell, settings, questions)
    existing = {
        (row["question_index"], row["sample"]): row
        for row in read_jsonl(answers_path)
        if row.get("cell_key") == key
    }
    wanted = [(q, s) for q in range(len(questions)) for s in range(settings.samples)]
    tokens, seconds = 0, 0.0
    if any(w not in existing for w in wanted):
        requests = [
            GenerationRequest(chat_messages(question), f"q{index}")
            for index, question in enumerate(questions)
        ]
        start = time.perf_counter()
        with cell.apply(loaded.model):
            generations = HFEngine(loaded).generate(requests, settings.sampling())
        seconds = time.perf_counter() - start
        tokens = sum(len(g.response_token_ids) for g in generations)
        rows = [
            _answer_row(key, cell, questions[g.request_index], g)
            for g in generations
            if (g.request_index, g.sample_index) not in existing
        ]
        append_jsonl(answers_path, rows)
        existing.update({(r["question_index"], r["sample"]): r for r in rows})
    return [dict(existing[w]) for w in wanted], tokens, seconds


# ---- judging --------------------------------------------------------------------------------


@dataclass
class Judges:
    """The trait and coherence judges of a run, plus optional off-target trait judges."""

    trait: Judge
    coherence: Judge
    others: dict[str, Judge] = field(default_factory=dict)

    def describe(self) -> str:
        return f"trait={self.trait.identity}; coherence={self.coherence.identity}"


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
    others: dict[str, Judge] = {}
    for name in other_traits:
        other = load_trait(name)
        if other.name == trait.name:
            continue
        others[other.name] = make_judge(
            other_judge, aspect="trait", trait=other, loaded_model=loaded
        )
    return Judges(
        trait_judge or make_judge(settings.judge, aspect="trait", trait=trait, loaded_model=loaded),
        make_judge(settings.coherence_judge, aspect="coherence", trait=trait, loaded_model=loaded),
        others,
    )


def judge_rows(
    rows: list[dict[str, Any]], judges: Judges, cache_path: Path, *, show_progress: bool = False
) -> None:
    """Add ``trait``, ``coherence`` and ``other.<trait>`` scores to ``rows`` (cached)."""
    items = [JudgeItem(r["question"], r["answer"]) for r in rows]
    todo: list[tuple[str, Judge]] = [("trait", judges.trait), ("coherence", judges.coherence)]
    todo += [(f"other.{name}", judge) for name, judge in judges.others.items()]
    with JudgmentCache(cache_path) as cache:
        for column, judge in todo:
            with stage(f"judging {column}", len(items), enabled=show_progress) as advance:
                done = 0

                def report(n: int) -> None:
                    nonlocal done
                    done += n
                    advance(done)

                scores = CachedJudge(judge, cache, chunk_size=64, on_chunk=report).score(items)
            for row, score in zip(rows, scores, strict=True):
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
    fields (questions, samples, max_new_tokens, temperature, seed, coherence_judge).
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
    run_dir: str | Path,
    force: bool = False,
    show_progress: bool = True,
) -> EvalResult:
    """Steer with ``setting`` on held-out questions; compare with the unsteered baseline.

    The setting is validated when built (:meth:`SteeringSetting.from_vector`); the model fit,
    judges and files are checked here before anything is generated or written.
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
    )
    out = Path(run_dir)
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
        capability = _capability(loaded, setting, mc_questions, str(mc_file))
    result = EvalResult(
        out, spec.name, steered, baseline, capability, judges.describe(), out / "report.md"
    )
    _write_evaluation(result, settings)
    return result


def _capability(
    loaded: LoadedModel, setting: SteeringSetting, mc_questions: Any, mc_file: str
) -> dict[str, Any]:
    """Multiple-choice accuracy without and with ``setting``."""
    from personavec.metrics.capability import evaluate_multiple_choice

    plain = evaluate_multiple_choice(loaded, mc_questions)
    with setting.apply(loaded.model):
        moved = evaluate_multiple_choice(loaded, mc_questions)
    return {
        "file": mc_file,
        "questions": len(mc_questions),
        "baseline_accuracy": plain.accuracy,
        "steered_accuracy": moved.accuracy,
        "change": moved.accuracy - plain.accuracy,
    }


def _write_evaluation(result: EvalResult, settings: EvalSettings) -> None:
    """``table.jsonl``, ``summary.json`` and ``report.md`` (each atomically)."""
    out = result.run_dir
    rows = [{**r, "steered": False} for r in result.baseline.rows]
    rows += [{**r, "steered": True} for r in result.steered.rows]
    atomic_write_text(
        out / "table.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    atomic_write_json(out / "summary.json", eval_summary(result, settings))
    atomic_write_text(out / "report.md", eval_report(result, settings))


def _stat_dict(stat: Stat) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(stat).items()
    }


def eval_summary(result: EvalResult, settings: EvalSettings) -> dict[str, Any]:
    def cell(c: CellResult) -> dict[str, Any]:
        return {
            "trait": _stat_dict(c.trait),
            "coherence": _stat_dict(c.coherence),
            "off_target": {k: _stat_dict(v) for k, v in c.off_target.items()},
        }

    steered = result.steered.cell
    return {
        "trait": result.trait,
        "layers": list(steered.layers),
        "coef": steered.coef,
        "relative": steered.unit == "relative",
        "positions": steered.positions,
        "op": steered.op,
        "settings": asdict(settings),
        "judge": result.judge,
        "steered": cell(result.steered),
        "baseline": cell(result.baseline),
        "trait_change": result.trait_change,
        "coherence_change": result.coherence_change,
        "off_target_change": {
            k: v.mean - result.baseline.off_target[k].mean
            for k, v in result.steered.off_target.items()
        },
        "capability": result.capability,
    }


def _quote(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else text


def eval_report(result: EvalResult, settings: EvalSettings) -> str:
    s, b = result.steered, result.baseline
    lines = [
        f"# Steering evaluation: {result.trait}",
        "",
        f"- Setting: {s.cell.label()}",
        f"- Questions: {len(s.rows) // max(settings.samples, 1)} held-out × {settings.samples} "
        f"samples, ≤ {settings.max_new_tokens} new tokens, temperature {settings.temperature:g}, "
        f"seed {settings.seed} (the baseline uses the same questions and seeds)",
        f"- Judges: {result.judge}",
        "",
        "| | trait (mean [95 % CI]) | trait std | coherence (mean [95 % CI]) | coherence std |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in (("unsteered", b), ("steered", s)):
        lines.append(
            f"| {name} | {c.trait.text()} | {c.trait.std:.1f} | {c.coherence.text()} | "
            f"{c.coherence.std:.1f} |"
        )
    lines += [
        "",
        f"Trait change **{result.trait_change:+.1f}**, coherence change "
        f"{result.coherence_change:+.1f}"
        + (" (below the paper's 75 floor)" if s.coherence.mean < 75 else "")
        + ".",
        "",
    ]
    if s.off_target:
        lines += ["## Off-target traits (same answers, other judges)", ""]
        lines += ["| trait | unsteered | steered | change |", "|---|---:|---:|---:|"]
        for name, stat in s.off_target.items():
            base = b.off_target[name]
            lines.append(
                f"| {name} | {base.mean:.1f} | {stat.mean:.1f} | {stat.mean - base.mean:+.1f} |"
            )
        lines.append("")
    if result.capability:
        cap = result.capability
        lines += [
            "## Capability (multiple choice)",
            "",
            f"{cap['questions']} questions from `{cap['file']}`: accuracy "
            f"{cap['baseline_accuracy']:.3f} unsteered, {cap['steered_accuracy']:.3f} steered "
            f"({cap['change']:+.3f}).",
            "",
        ]
    lines += ["## Examples", ""]
    for base_row, steered_row in list(zip(b.rows, s.rows, strict=True))[:3]:
        lines += [
            f"*{_quote(base_row['question'], 120)}*",
            "",
            f"- unsteered (trait {_fmt(base_row.get('trait'))}): {_quote(base_row['answer'])}",
            f"- steered (trait {_fmt(steered_row.get('trait'))}): {_quote(steered_row['answer'])}",
            "",
        ]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"

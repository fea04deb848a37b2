"""``personavec shift-study``: does the finetuning shift predict the finetuned trait score?

For each trait × level a trait-inducing dataset is built (on the base model), a LoRA finetune is
trained on it and merged, and every finetune (plus the base, as reference) is

* evaluated on every study trait with the evaluation machinery of ``personavec evaluate``
  (held-out questions, judged trait and coherence; judges run on the *base* model, so every
  finetune is scored by the same judge), and
* measured: its finetuning shift along every trait's vector (:mod:`personavec.training.shift`).

Then, per trait, Pearson r between the shift along the trait's vector and the trait score over
the finetunes; pooled over traits; and the cross-trait baseline (trait score against the shift
along *other* traits' vectors).

Run directory (resumable: a killed study re-uses every finished dataset, finetune and model
record): ``config.json``, ``datasets/T-LEVEL.jsonl`` (+ ``.meta.json``), ``finetunes/T-LEVEL/``,
``eval/MODEL/T/answers.jsonl``, ``judgments.sqlite``, ``models/MODEL.json`` (scores and shifts,
written last), ``summary.json``, ``report.md``, ``shift_study.png``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import cast

import torch

from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.judges.contrast import ContrastJudge
from personavec.pipeline.evaluate import (
    EvalSettings,
    Judges,
    generate_cell,
    judge_rows,
    prepare_evaluation,
    summarise_cell,
)
from personavec.pipeline.stage import check_run_identity
from personavec.store import atomic_write_json
from personavec.training.chat_data import read_chat_dataset
from personavec.training.dataset import (
    LEVELS,
    BuildSettings,
    Level,
    build_dataset,
    local_generator,
    meta_path_for,
)
from personavec.training.finetune import FinetuneConfig, finetune
from personavec.training.finetuned import load_finetuned
from personavec.training.prompt_pool import load_prompt_pool
from personavec.training.shift import finetuning_shift, vector_layer
from personavec.traits.library import load_trait

Log = Callable[[str], None]


@dataclass(frozen=True)
class StudySettings:
    """What the study builds, trains and measures (recorded in ``config.json``)."""

    traits: tuple[str, ...]
    levels: tuple[str, ...] = LEVELS
    n: int = 150
    """Rows per dataset."""
    build_max_new_tokens: int = 64
    questions: int = 10
    """Held-out evaluation questions per trait (also the prompts of the shift)."""
    samples: int = 2
    max_new_tokens: int = 48
    judge: str = "contrast"
    judge_pairs: int | None = None
    """Instruction pairs of the contrast judge (None: all)."""
    coherence_judge: str = "heuristic"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.traits:
            raise PersonavecError("pass at least one trait, e.g. --traits evil")
        unknown = [lvl for lvl in self.levels if lvl not in LEVELS]
        if unknown or not self.levels:
            raise PersonavecError(f"unknown levels {unknown}; use {', '.join(LEVELS)}")


@dataclass
class ModelRecord:
    """One evaluated model (a finetune, or the base with ``dataset`` None)."""

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


@dataclass
class StudyContext:
    base: LoadedModel
    vectors: dict[str, PersonaVector]
    settings: StudySettings
    config: FinetuneConfig
    run_dir: Path
    log: Log
    show_progress: bool
    evals: dict[str, tuple[EvalSettings, list[str], Judges]] = field(default_factory=dict)
    base_means: dict[str, torch.Tensor] = field(default_factory=dict)


def shift_study(
    base: LoadedModel,
    vectors: Sequence[PersonaVector],
    settings: StudySettings,
    config: FinetuneConfig,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
    log: Log = lambda message: None,
) -> list[ModelRecord]:
    """Run (or resume) the study; return one record per model, the base first."""
    by_trait = {v.meta.trait: v for v in vectors}
    missing = [t for t in settings.traits if t not in by_trait]
    if missing:
        raise PersonavecError(f"no vector for traits {missing}; pass --vector for each trait")
    for vector in by_trait.values():
        vector.check_compatible(base.model)
        vector_layer(vector, None)
    out = Path(run_dir)
    identity = json.loads(
        json.dumps(
            {"settings": asdict(settings), "finetune": asdict(config), "base": base.model_id}
        )
    )
    check_run_identity(
        out, identity, ("settings", "finetune", "base"), overwrite=overwrite, stale=()
    )
    atomic_write_json(out / "config.json", identity)
    ctx = StudyContext(base, by_trait, settings, config, out, log, show_progress)
    for trait in settings.traits:
        ctx.evals[trait] = _prepare(ctx, trait)
    from personavec.pipeline.shift_study_report import write_report

    records = [_measure(ctx, "base", base, None, None, 0, None)]
    for trait in settings.traits:
        for level in settings.levels:
            records.append(_one_finetune(ctx, trait, level))
            write_report(records, settings, out)  # partial results are readable as they come
    write_report(records, settings, out)
    return records


def _prepare(ctx: StudyContext, trait: str) -> tuple[EvalSettings, list[str], Judges]:
    spec = load_trait(trait)
    s = ctx.settings
    judge: str | ContrastJudge = s.judge
    if s.judge == "contrast" and s.judge_pairs is not None:
        judge = ContrastJudge(ctx.base, spec, max_pairs=s.judge_pairs)
    return prepare_evaluation(
        ctx.base,
        spec,
        judge,
        questions=s.questions,
        samples=s.samples,
        max_new_tokens=s.max_new_tokens,
        seed=s.seed,
        coherence_judge=s.coherence_judge,
    )


def _one_finetune(ctx: StudyContext, trait: str, level: str) -> ModelRecord:
    name = f"{trait}-{level}"
    record_path = ctx.run_dir / "models" / f"{name}.json"
    if record_path.is_file():
        ctx.log(f"{name}: done earlier, reused")
        return ModelRecord(**json.loads(record_path.read_text()))
    data = ctx.run_dir / "datasets" / f"{name}.jsonl"
    if not meta_path_for(data).is_file():
        ctx.log(f"{name}: building the dataset")
        spec = load_trait(trait)
        build = BuildSettings(
            trait=trait,
            level=cast("Level", level),
            n=ctx.settings.n,
            max_new_tokens=ctx.settings.build_max_new_tokens,
            seed=ctx.settings.seed,
            judge=ctx.settings.judge,
            judge_pairs=ctx.settings.judge_pairs,
        )
        judges = (ctx.evals[trait][2].trait, ctx.evals[trait][2].coherence)
        build_dataset(
            spec,
            build,
            data,
            generate=local_generator(ctx.base),
            generator_name=f"local:{ctx.base.model_id}",
            judges=judges,
            questions=load_prompt_pool(),
        )
    twin = _twin(ctx, name, data)
    if twin is not None:  # e.g. two traits' normal sets: the model's own default answers
        ctx.log(f"{name}: same rows as {twin.name}; its finetune and measurements are reused")
        record = replace(twin, name=name, dataset=trait, level=level, same_data_as=twin.name)
        atomic_write_json(record_path, asdict(record))
        return record
    rows = read_chat_dataset(data)
    ctx.log(f"{name}: finetuning on {len(rows)} rows")
    result = finetune(
        ctx.base,
        rows,
        ctx.run_dir / "finetunes" / name,
        ctx.config,
        dataset_path=data,
        merge=True,
        show_progress=ctx.show_progress,
    )
    tuned = load_finetuned(result.path)
    ctx.log(f"{name}: evaluating and measuring the shift")
    record = _measure(
        ctx, name, tuned, trait, level, len(rows), result.record["metrics"]["train_loss"]
    )
    del tuned
    gc.collect()
    return record


def _twin(ctx: StudyContext, name: str, data: Path) -> ModelRecord | None:
    """A finished finetune of this study trained on the same bytes as ``data``, if any."""
    content = data.read_bytes()
    for path in sorted((ctx.run_dir / "models").glob("*.json")):
        other = ModelRecord(**json.loads(path.read_text()))
        other_data = ctx.run_dir / "datasets" / f"{other.name}.jsonl"
        if (
            other.name != name
            and other.dataset is not None
            and other.same_data_as is None
            and other_data.is_file()
            and other_data.read_bytes() == content
        ):
            return other
    return None


def _measure(
    ctx: StudyContext,
    name: str,
    model: LoadedModel,
    trait: str | None,
    level: str | None,
    rows: int,
    loss: float | None,
) -> ModelRecord:
    record_path = ctx.run_dir / "models" / f"{name}.json"
    if record_path.is_file():
        return ModelRecord(**json.loads(record_path.read_text()))
    scores: dict[str, float] = {}
    coherence: dict[str, float] = {}
    for t in ctx.settings.traits:
        settings, questions, judges = ctx.evals[t]
        vector = ctx.vectors[t]
        cell = SteeringSetting(vector, (vector_layer(vector, None),), 0.0)  # unsteered
        answers = ctx.run_dir / "eval" / name / t / "answers.jsonl"
        got, tokens, seconds = generate_cell(model, cell, questions, settings, answers)
        judge_rows(got, judges, ctx.run_dir / "judgments.sqlite", show_progress=False)
        summary = summarise_cell(cell, got, tokens, seconds)
        scores[t], coherence[t] = summary.trait.mean, summary.coherence.mean
    prompts = {t: ctx.evals[t][1] for t in ctx.settings.traits}
    vectors = [ctx.vectors[t] for t in ctx.settings.traits]
    report = finetuning_shift(
        ctx.base, model, vectors, questions=prompts, base_means=ctx.base_means
    )
    record = ModelRecord(
        name,
        trait,
        level,
        rows,
        loss,
        scores,
        coherence,
        {s.trait: s.shift for s in report.shifts},
        {s.trait: s.per_layer for s in report.shifts},
    )
    atomic_write_json(record_path, asdict(record))
    return record

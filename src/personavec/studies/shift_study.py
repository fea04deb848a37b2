"""``personavec shift-study``: does the finetuning shift predict the finetuned trait score?

For each trait × level a trait-inducing dataset is built (on the base model), a LoRA finetune is
trained on it and merged, and every finetune (plus the base, as reference) is

* evaluated on every study trait with the evaluation machinery of ``personavec evaluate``
  (held-out questions, judged trait and coherence; judges run on the *base* model, so every
  finetune is scored by the same judge), and
* measured: its finetuning shift along every trait's vector (:mod:`personavec.training.shift`).

Every finetune is loaded like the base (same dtype and device: ``load_finetuned(path,
like=base)``). Then, per trait, Pearson r between the shift along the trait's vector and the
trait score over the finetunes; pooled over traits; and the cross-trait baseline (trait score
against the shift along *other* traits' vectors).

The directory is opened with the run primitive (:func:`personavec.runs.run.open_run`) under the
study's full identity: every setting, the finetune settings, each vector's content hash and the
base model's id, dtype, device and weights hash. The same identity resumes; another is refused
in one line naming what changed, or with ``overwrite`` deleted and recomputed. A finetune's
record, model and answers are stored under ``NAME-KEY``, ``KEY`` being the hash of its trait,
level and dataset content (:func:`personavec.runs.rows.record_key`): a changed dataset gets a
new finetune, never the old numbers.

Run directory: ``config.json``, ``datasets/T-LEVEL.jsonl`` (+ ``.meta.json``),
``finetunes/T-LEVEL-KEY/``, ``eval/MODEL-KEY/T/answers.jsonl``, ``judgments.sqlite``,
``models/MODEL-KEY.json`` (scores and shifts, written last), ``summary.json``, ``report.md``,
``shift_study.png``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import cast

import torch

from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.pipeline.evaluate import EvalSettings, Judges
from personavec.pipeline.evaluate_cells import generate_cell, judge_rows, summarise_cell
from personavec.runs.identity import file_sha256, vector_sha256, weights_sha256
from personavec.runs.rows import record_key
from personavec.runs.run import open_run
from personavec.store import atomic_write_json
from personavec.studies.common import Log, base_identity, study_evaluation
from personavec.studies.shift_study_report import write_report
from personavec.studies.shift_study_types import ModelRecord, StudySettings
from personavec.training.chat_data import read_chat_dataset
from personavec.training.dataset import (
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

__all__ = ["STUDY_OUTPUTS", "ModelRecord", "StudySettings", "shift_study"]

STUDY_OUTPUTS = ("datasets", "finetunes", "models", "eval", "records", "*.json", "*.md", "*.png")
"""What a shift study writes under its directory (all tied to its identity)."""


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


def study_identity(
    base: LoadedModel,
    vectors: dict[str, PersonaVector],
    settings: StudySettings,
    config: FinetuneConfig,
) -> dict[str, object]:
    """Everything that changes the study's numbers, known before hashing the base's weights."""
    return {
        **asdict(settings),
        "finetune": asdict(config),
        **base_identity(base),
        "vector_sha256": {trait: vector_sha256(v) for trait, v in sorted(vectors.items())},
    }


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
    """Run (or resume) the study in ``run_dir``; return one record per model, the base first.

    Raises:
        PersonavecError: A trait without a vector, a vector that does not fit the base, a
            ``run_dir`` that is a file, or a directory holding a study with another identity
            (without ``overwrite``).
    """
    by_trait = {v.meta.trait: v for v in vectors}
    missing = [t for t in settings.traits if t not in by_trait]
    if missing:
        raise PersonavecError(f"no vector for traits {missing}; pass --vector for each trait")
    for vector in by_trait.values():
        vector.check_compatible(base.model)
        vector_layer(vector, None)
    identity = study_identity(base, by_trait, settings, config)
    with open_run(run_dir, identity, outputs=STUDY_OUTPUTS, overwrite=overwrite) as run:
        ctx = StudyContext(base, by_trait, settings, config, run.dir, log, show_progress)
        for trait in settings.traits:
            ctx.evals[trait] = study_evaluation(base, trait, settings)
        # The judges' identities (prompts, model, dtype), not only their names: a judge whose
        # meaning changed between versions never scores beside the old one's records.
        judges = {t: ctx.evals[t][2].describe() for t in settings.traits}
        run.start(weights_sha256=weights_sha256(base.model), judges=judges)
        records = [_measure(ctx, ModelRecord("base", None, None, 0, None, {}, {}, {}), base)]
        for trait in settings.traits:
            for level in settings.levels:
                records.append(_one_finetune(ctx, trait, level))
                write_report(records, settings, run.dir)  # partial results readable as they come
        write_report(records, settings, run.dir)
    return records


def _build(ctx: StudyContext, trait: str, level: str, data: Path) -> None:
    """Build ``data`` on the base model unless a finished build is there."""
    if meta_path_for(data).is_file():
        return
    ctx.log(f"{trait}-{level}: building the dataset")
    s = ctx.settings
    build = BuildSettings(
        trait=trait,
        level=cast("Level", level),
        n=s.n,
        max_new_tokens=s.build_max_new_tokens,
        seed=s.seed,
        judge=s.judge,
        judge_pairs=s.judge_pairs,
    )
    build_dataset(
        load_trait(trait),
        build,
        data,
        generate=local_generator(ctx.base),
        generator_name=f"local:{ctx.base.model_id}",
        judges=(ctx.evals[trait][2].trait, ctx.evals[trait][2].coherence),
        questions=load_prompt_pool(),
    )


def _one_finetune(ctx: StudyContext, trait: str, level: str) -> ModelRecord:
    name = f"{trait}-{level}"
    data = ctx.run_dir / "datasets" / f"{name}.jsonl"
    _build(ctx, trait, level, data)
    digest = file_sha256(data)
    key = record_key({"trait": trait, "level": level, "dataset_sha256": digest})
    record_path = ctx.run_dir / "models" / f"{name}-{key}.json"
    if record_path.is_file():
        ctx.log(f"{name}: done earlier, reused")
        return ModelRecord(**json.loads(record_path.read_text()))
    twin = _twin(ctx, name, digest)
    if twin is not None:  # e.g. two traits' normal sets: the model's own default answers
        ctx.log(f"{name}: same rows as {twin.name}; its finetune and measurements are reused")
        record = replace(
            twin, name=name, dataset=trait, level=level, same_data_as=twin.name, key=key
        )
        atomic_write_json(record_path, asdict(record))
        return record
    rows = read_chat_dataset(data)
    ctx.log(f"{name}: finetuning on {len(rows)} rows")
    result = finetune(
        ctx.base,
        rows,
        ctx.run_dir / "finetunes" / f"{name}-{key}",
        ctx.config,
        dataset_path=data,
        merge=True,
        show_progress=ctx.show_progress,
    )
    tuned = load_finetuned(result.path, like=ctx.base)
    ctx.log(f"{name}: evaluating and measuring the shift")
    loss = result.record["metrics"]["train_loss"]
    record = _measure(
        ctx,
        ModelRecord(name, trait, level, len(rows), loss, {}, {}, {}, {}, None, key, digest),
        tuned,
    )
    del tuned
    gc.collect()
    return record


def _twin(ctx: StudyContext, name: str, digest: str) -> ModelRecord | None:
    """A finished finetune of this study trained on a dataset with the content ``digest``."""
    for path in sorted((ctx.run_dir / "models").glob("*.json")):
        other = ModelRecord(**json.loads(path.read_text()))
        if (
            other.name != name
            and other.dataset is not None
            and other.same_data_as is None
            and other.dataset_sha256 == digest
        ):
            return other
    return None


def _measure(ctx: StudyContext, record: ModelRecord, model: LoadedModel) -> ModelRecord:
    """Fill ``record``'s scores and shifts from ``model`` (or read them when measured earlier);
    answers go to ``eval/NAME-KEY/``, the record to ``models/NAME-KEY.json``."""
    if not record.key:
        record.key = record_key({"model": record.name})
    stem = f"{record.name}-{record.key}"
    record_path = ctx.run_dir / "models" / f"{stem}.json"
    if record_path.is_file():
        return ModelRecord(**json.loads(record_path.read_text()))
    for t in ctx.settings.traits:
        settings, questions, judges = ctx.evals[t]
        vector = ctx.vectors[t]
        cell = SteeringSetting(vector, (vector_layer(vector, None),), 0.0)  # unsteered
        answers = ctx.run_dir / "eval" / stem / t / "answers.jsonl"
        got, tokens, seconds = generate_cell(model, cell, questions, settings, answers)
        judge_rows(got, judges, ctx.run_dir / "judgments.sqlite", show_progress=False)
        summary = summarise_cell(cell, got, tokens, seconds)
        record.trait[t], record.coherence[t] = summary.trait.mean, summary.coherence.mean
    prompts = {t: ctx.evals[t][1] for t in ctx.settings.traits}
    vectors = [ctx.vectors[t] for t in ctx.settings.traits]
    report = finetuning_shift(
        ctx.base, model, vectors, questions=prompts, base_means=ctx.base_means
    )
    record.shift = {s.trait: s.shift for s in report.shifts}
    record.shift_per_layer = {s.trait: s.per_layer for s in report.shifts}
    atomic_write_json(record_path, asdict(record))
    return record

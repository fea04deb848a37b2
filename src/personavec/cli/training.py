"""``personavec dataset build``, ``finetune``, ``shift`` and ``shift-study``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.table import Table

from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    EngineOption,
    ModelOption,
    console,
    err_console,
    friendly_errors,
)
from personavec.cli.finetune import finetune_command
from personavec.errors import PersonavecError

dataset_app = typer.Typer(no_args_is_help=True, help="Build trait-inducing finetuning datasets.")
JudgeOpt = Annotated[
    str, typer.Option(help="Trait judge: contrast (offline), embedding, openai:M.")
]
CoherenceOpt = Annotated[str, typer.Option(help="Coherence judge: heuristic or openai:MODEL.")]
QuietOpt = Annotated[bool, typer.Option(help="No progress bars.")]


@dataset_app.command("build")
@friendly_errors
def dataset_build(
    trait: Annotated[str, typer.Option("--trait", "-t", help="Trait name or trait JSON file.")],
    out: Annotated[Path, typer.Option(help="Output JSONL (a NAME.meta.json sidecar is added).")],
    level: Annotated[str, typer.Option(help="normal, mild or strong.")] = "strong",
    n: Annotated[int, typer.Option("--n", help="Rows to keep.")] = 300,
    questions: Annotated[
        Path | None, typer.Option(help="Question file (default: the shipped everyday pool).")
    ] = None,
    generator: Annotated[
        str, typer.Option(help="'local' (the --model) or openai:MODEL (any compatible endpoint).")
    ] = "local",
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible URL.")] = None,
    judge: JudgeOpt = "contrast",
    judge_pairs: Annotated[
        int | None,
        typer.Option(help="Contrast-judge instruction pairs (default all; fewer is faster)."),
    ] = None,
    coherence_judge: CoherenceOpt = "heuristic",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 96,
    max_rounds: Annotated[int, typer.Option(help="Generation rounds before giving up.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Answers generated and judged at a time.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    model: ModelOption = "smollm2",
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --out; restart a build with other settings.")
    ] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quiet: QuietOpt = False,
    engine: EngineOption = "hf",
) -> None:
    """Generate, judge and filter answers at a trait level; write chat-format JSONL.

    Resumable: a killed build picks up from its last finished batch (``.OUT.partial/``)."""
    from personavec.core.models import load_model
    from personavec.engines.factory import check_engine
    from personavec.progress import stage
    from personavec.runs.identity import weights_sha256
    from personavec.store import check_output_file
    from personavec.training import dataset as ds
    from personavec.training.dataset import Level
    from personavec.training.prompt_pool import load_prompt_pool, read_questions
    from personavec.traits.library import load_trait

    check_engine(engine)
    if engine != "hf" and generator != "local":
        raise PersonavecError("--engine is for --generator local; drop one of them")
    spec = load_trait(trait)
    settings = ds.BuildSettings(
        trait=spec.name,
        level=cast("Level", level),
        n=n,
        max_new_tokens=max_new_tokens,
        seed=seed,
        max_rounds=max_rounds,
        batch_size=batch_size,
        judge=judge,
        judge_pairs=judge_pairs,
        coherence_judge=coherence_judge,
    )
    check_output_file(out, overwrite=overwrite)
    pool = read_questions(questions) if questions else load_prompt_pool()
    needs_model = generator == "local" or judge == "contrast"
    loaded = load_model(model, device=device, dtype=dtype) if needs_model else None
    identity = {"base_url": base_url}
    if loaded is not None:
        identity.update(model=loaded.model_id, weights_sha256=weights_sha256(loaded.model))
    judges = ds.make_build_judges(spec, judge, coherence_judge, loaded, judge_pairs=judge_pairs)
    if generator == "local":
        assert loaded is not None
        generate = ds.local_generator(loaded, engine)
        name = f"local:{loaded.model_id}" + ("" if engine == "hf" else f":{engine}")
    else:
        generate, name = ds.openai_generator(generator, base_url=base_url), generator
    with stage(f"building {spec.name}/{level}", n, enabled=not quiet) as advance:
        result = ds.build_dataset(
            spec,
            settings,
            out,
            generate=generate,
            generator_name=name,
            judges=judges,
            questions=pool,
            progress=lambda kept, total: advance(kept),
            identity=identity,
            overwrite=overwrite,
        )
    console.print(
        f"kept {result.kept} of {result.generated} answers "
        f"(mean trait score {result.meta['mean_trait_score']:.1f}); wrote {result.path} "
        f"and {result.meta_path}",
        highlight=False,
    )
    if result.kept < n:
        err_console.print(f"warning: only {result.kept} of {n} rows passed the filter")


@friendly_errors
def shift_command(
    finetuned: Annotated[Path, typer.Option(help="A finished `personavec finetune` directory.")],
    vector: Annotated[list[Path], typer.Option(help="Persona-vector file (repeatable).")],
    base: Annotated[str, typer.Option(help="Base model the finetune started from.")] = "smollm2",
    layer: Annotated[int | None, typer.Option(help="Layer (default: each vector's own).")] = None,
    questions: Annotated[
        int | None, typer.Option(help="First N (>= 1) evaluation questions (default all).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="JSON output (default FINETUNED/shift.json).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --out that is not a shift report.")
    ] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Finetuning shift: mean last-prompt-token activation, finetuned − base, along each vector.

    The finetune is loaded in the base's dtype and on its device."""
    from personavec.core.models import load_model
    from personavec.core.vector import PersonaVector
    from personavec.store import atomic_write_json, check_output_file
    from personavec.training.finetuned import load_finetuned, read_record
    from personavec.training.shift import finetuning_shift, is_shift_report

    if questions is not None and questions < 1:
        raise PersonavecError(f"--questions must be at least 1, got {questions}; omit it for all")
    read_record(finetuned)
    target = check_output_file(
        out or Path(finetuned) / "shift.json", overwrite=overwrite, replaceable=is_shift_report
    )
    vectors = [PersonaVector.load(v) for v in vector]
    loaded = load_model(base, device=device, dtype=dtype)
    for v in vectors:
        v.check_compatible(loaded.model)
    tuned = load_finetuned(finetuned, like=loaded)
    report = finetuning_shift(
        loaded, tuned, vectors, layers=[layer] * len(vectors), n_questions=questions
    )
    table = Table(title=f"finetuning shift of {finetuned}")
    for column in ("trait", "layer", "shift", "base proj", "finetuned proj", "prompts"):
        table.add_column(column, justify="left" if column == "trait" else "right")
    for s in report.shifts:
        table.add_row(
            s.trait,
            str(s.layer),
            f"{s.shift:+.4f}",
            f"{s.base_projection:.3f}",
            f"{s.finetuned_projection:.3f}",
            str(s.n_prompts),
        )
    console.print(table)
    path = atomic_write_json(target, report.as_dict())
    console.print(f"per-layer shifts: {path}", highlight=False)


@friendly_errors
def shift_study_command(
    traits: Annotated[str, typer.Option(help="Comma-separated traits, e.g. evil,sycophantic.")],
    vector: Annotated[list[Path], typer.Option(help="One persona-vector file per trait.")],
    out: Annotated[Path, typer.Option(help="Run directory (resumable).")],
    levels: Annotated[str, typer.Option(help="Dataset levels.")] = "normal,mild,strong",
    n: Annotated[int, typer.Option("--n", help="Rows per dataset.")] = 150,
    questions: Annotated[int, typer.Option(help="Evaluation questions per trait.")] = 10,
    samples: Annotated[int, typer.Option(help="Samples per question.")] = 2,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per evaluation answer.")] = 48,
    build_max_new_tokens: Annotated[int, typer.Option(help="Tokens per dataset answer.")] = 64,
    judge: JudgeOpt = "contrast",
    judge_pairs: Annotated[int | None, typer.Option(help="Contrast-judge pairs (speed).")] = None,
    coherence_judge: CoherenceOpt = "heuristic",
    paper: Annotated[bool, typer.Option(help="Paper finetune settings.")] = False,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    model: ModelOption = "smollm2",
    overwrite: Annotated[bool, typer.Option(help="Start the run afresh.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quiet: QuietOpt = False,
) -> None:
    """For each trait × level: build data, finetune, evaluate, measure the shift; correlate."""
    from personavec.core.grammar import split_list
    from personavec.core.models import load_model
    from personavec.core.vector import PersonaVector
    from personavec.studies.common import study_finetune_config
    from personavec.studies.shift_study import StudySettings, shift_study

    settings = StudySettings(
        traits=tuple(split_list(traits)),
        levels=tuple(split_list(levels)),
        n=n,
        questions=questions,
        samples=samples,
        max_new_tokens=max_new_tokens,
        build_max_new_tokens=build_max_new_tokens,
        judge=judge,
        judge_pairs=judge_pairs,
        coherence_judge=coherence_judge,
        seed=seed,
    )
    config = study_finetune_config(seed=seed, lr=lr, epochs=epochs, paper=paper)
    vectors = [PersonaVector.load(v) for v in vector]
    loaded = load_model(model, device=device, dtype=dtype)
    records = shift_study(
        loaded,
        vectors,
        settings,
        config,
        out,
        overwrite=overwrite,
        show_progress=not quiet,
        log=lambda m: err_console.print(f"{time.strftime('%H:%M:%S')} {m}", highlight=False),
    )
    summary = json.loads((out / "summary.json").read_text())["correlations"]
    table = Table(title="shift study")
    table.add_column("model")
    for t in settings.traits:
        table.add_column(f"{t} score", justify="right")
        table.add_column(f"{t} shift", justify="right")
    for r in records:
        table.add_row(
            r.name,
            *[x for t in settings.traits for x in (f"{r.trait[t]:.1f}", f"{r.shift[t]:+.3f}")],
        )
    console.print(table)
    for t, value in summary["per_trait"].items():
        console.print(f"r({t}) = {'n/a' if value is None else f'{value:.2f}'}", highlight=False)
    console.print(f"report: {out / 'report.md'}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``dataset``, ``finetune``, ``shift`` and ``shift-study`` to ``app``."""
    registered = {info.name for info in app.registered_commands}
    if "dataset" not in {g.name for g in app.registered_groups}:
        app.add_typer(dataset_app, name="dataset")
    for name, command in (
        ("finetune", finetune_command),
        ("shift", shift_command),
        ("shift-study", shift_study_command),
    ):
        if name not in registered:
            app.command(name)(command)

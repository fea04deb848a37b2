"""``personavec evaluate`` and ``personavec sweep``: thin wrappers over the pipeline modules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    EngineOption,
    JudgeConcurrencyOption,
    JudgeTimeoutOption,
    ModelOption,
    console,
    friendly_errors,
    setting_from_options,
)

if TYPE_CHECKING:
    from personavec.pipeline.evaluate_types import EvalResult
    from personavec.pipeline.sweep_types import SweepResult

JudgeOption = Annotated[
    str, typer.Option(help="Trait judge: contrast (offline), embedding or openai:MODEL.")
]
CoherenceOption = Annotated[str, typer.Option(help="Coherence judge: heuristic or openai:MODEL.")]
QuestionsOption = Annotated[
    int | None, typer.Option(help="Held-out evaluation questions (default: all).")
]
SamplesOption = Annotated[int, typer.Option(help="Answers per question.")]
RelativeOption = Annotated[
    bool, typer.Option("--relative/--raw", help="Coefficients as fractions of the typical norm.")
]
OptionalRelative = Annotated[
    bool | None,
    typer.Option(
        "--relative/--raw",
        help="Coefficient as a fraction of the typical norm, or raw (default raw, or as "
        "calibrated in the file).",
    ),
]


def _run_dir(kind: str, trait: str, vector: Path, out: Path | None) -> Path:
    if out is not None:
        return out
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(trait).stem}-{vector.stem}").strip("-")
    return Path("runs") / f"{kind}-{slug}"


@friendly_errors
def evaluate_command(
    trait: Annotated[str, typer.Option("--trait", "-t", help="Trait name or trait JSON file.")],
    vector: Annotated[Path, typer.Option(help="Persona-vector file.")],
    layer: Annotated[
        str | None, typer.Option(help="Layer(s): 12, 8,12 or 8-16; default: the file's.")
    ] = None,
    coef: Annotated[
        float | None, typer.Option(help="Steering coefficient; default: the file's.")
    ] = None,
    relative: OptionalRelative = None,
    positions: Annotated[
        str | None,
        typer.Option(help="all, prompt or response (default all, or as calibrated in the file)."),
    ] = None,
    questions: QuestionsOption = None,
    samples: SamplesOption = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 64,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    judge: JudgeOption = "contrast",
    coherence_judge: CoherenceOption = "heuristic",
    judge_timeout: JudgeTimeoutOption = None,
    judge_concurrency: JudgeConcurrencyOption = 8,
    other_traits: Annotated[
        str | None, typer.Option(help="Comma-separated traits to check for side effects.")
    ] = None,
    mc_file: Annotated[
        Path | None, typer.Option(help="Multiple-choice JSONL/CSV for a capability check.")
    ] = None,
    mc_scoring: Annotated[
        str, typer.Option(help="MC scoring: letter (MMLU) or text (choice text as the reply).")
    ] = "letter",
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start the run directory afresh.")] = False,
    model: ModelOption = "smollm2",
    force: Annotated[bool, typer.Option(help="Use a vector from a related model.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    engine: EngineOption = "hf",
) -> None:
    """Steer on held-out questions; trait and coherence against the unsteered baseline."""
    from personavec.core.grammar import split_list
    from personavec.core.models import load_model
    from personavec.engines.factory import check_engine
    from personavec.errors import PersonavecError
    from personavec.metrics.capability import SCORINGS, load_mc_file
    from personavec.pipeline.evaluate import evaluate_steering
    from personavec.traits.library import load_trait

    # Everything is checked before the model loads.
    check_engine(engine)
    spec = load_trait(trait)
    setting = setting_from_options(
        vector, layer=layer, coef=coef, relative=relative, positions=positions
    )
    if mc_file is not None:
        load_mc_file(mc_file)  # bad file → one line, before loading the model
    if mc_scoring not in SCORINGS:
        raise PersonavecError(f"unknown --mc-scoring {mc_scoring!r}; use letter or text")
    others = split_list(other_traits)
    for name in others:
        load_trait(name)
    loaded = load_model(model, device=device, dtype=dtype)
    result = evaluate_steering(
        loaded,
        spec,
        setting,
        questions=questions,
        samples=samples,
        judge=judge,
        coherence_judge=coherence_judge,
        seed=seed,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        other_traits=others,
        mc_file=mc_file,
        mc_scoring=mc_scoring,  # type: ignore[arg-type]  # checked above
        run_dir=_run_dir("evaluate", trait, vector, out),
        overwrite=overwrite,
        force=force,
        show_progress=not quiet,
        judge_timeout_s=judge_timeout,
        judge_concurrency=judge_concurrency,
        engine=engine,
    )
    _print_evaluation(result)


def _print_evaluation(result: EvalResult) -> None:
    b, s = result.baseline, result.steered
    console.print(
        f"{s.cell.label()}: trait {b.trait.text()} → {s.trait.text()} "
        f"({result.trait_change:+.1f}); coherence {b.coherence.text()} → "
        f"{s.coherence.text()} ({result.coherence_change:+.1f})",
        highlight=False,
        markup=False,
    )
    for name, stat in s.off_target.items():
        change = stat.mean - b.off_target[name].mean
        console.print(f"  off-target {name}: {change:+.1f}", highlight=False, markup=False)
    if result.capability:
        cap = result.capability
        console.print(
            f"  capability: accuracy {cap['baseline_accuracy']:.3f} → "
            f"{cap['steered_accuracy']:.3f}",
            highlight=False,
        )
    console.print(f"report: {result.report_path}", highlight=False, markup=False)


@friendly_errors
def sweep_command(
    trait: Annotated[str, typer.Option("--trait", "-t", help="Trait name or trait JSON file.")],
    vector: Annotated[Path, typer.Option(help="Persona-vector file (calibration written here).")],
    layers: Annotated[str, typer.Option(help="Layers: 8,12,16, 8-20 or 8-20:4.")],
    coefs: Annotated[str, typer.Option(help="Coefficient grid, e.g. -2,-1,0,1,2.")],
    relative: RelativeOption = False,
    target_trait: Annotated[
        float | None, typer.Option(help="Calibrate to this mean trait score.")
    ] = None,
    target_change: Annotated[
        float | None, typer.Option(help="Calibrate to this change from the baseline.")
    ] = None,
    coherence_floor: Annotated[
        float, typer.Option(help="Minimum mean coherence (paper: 75; lower for small models).")
    ] = 75.0,
    positions: Annotated[str, typer.Option(help="Position mode(s): all, prompt, response.")] = (
        "all"
    ),
    questions: QuestionsOption = None,
    samples: SamplesOption = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 48,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    judge: JudgeOption = "contrast",
    coherence_judge: CoherenceOption = "heuristic",
    judge_timeout: JudgeTimeoutOption = None,
    judge_concurrency: JudgeConcurrencyOption = 8,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start the run directory afresh.")] = False,
    write: Annotated[
        bool, typer.Option("--write/--no-write", help="Store the recommendation in the vector.")
    ] = True,
    model: ModelOption = "smollm2",
    force: Annotated[bool, typer.Option(help="Use a vector from a related model.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    engine: EngineOption = "hf",
) -> None:
    """Dose-response over layers × coefficients; pick a layer, calibrate, store in the vector."""
    from personavec.core.grammar import parse_layers, split_list
    from personavec.core.models import load_model
    from personavec.core.vector import PersonaVector
    from personavec.engines.factory import check_engine
    from personavec.errors import PersonavecError
    from personavec.pipeline.sweep import parse_grid, sweep
    from personavec.traits.library import load_trait

    check_engine(engine)
    if target_trait is not None and target_change is not None:
        raise PersonavecError("pass --target-trait or --target-change, not both")
    spec = load_trait(trait)
    pv = PersonaVector.load(vector)
    layer_list = parse_layers(layers, pv.meta.n_layers)
    grid = parse_grid(coefs)
    position_list = split_list(positions)
    loaded = load_model(model, device=device, dtype=dtype)
    result = sweep(
        loaded,
        spec,
        pv,
        layer_list,
        grid,
        positions=position_list,
        relative=relative,
        questions=questions,
        samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        judge=judge,
        coherence_judge=coherence_judge,
        target_trait=target_trait,
        target_change=target_change,
        coherence_floor=coherence_floor,
        run_dir=_run_dir("sweep", trait, vector, out),
        overwrite=overwrite,
        vector_path=vector,
        write=write,
        force=force,
        show_progress=not quiet,
        judge_timeout_s=judge_timeout,
        judge_concurrency=judge_concurrency,
        engine=engine,
    )
    _print_sweep(result)


def _print_sweep(result: SweepResult) -> None:
    from personavec.pipeline.sweep_types import recommended_coef

    for curve in result.curves:
        values = ", ".join(
            f"{c:+g}: {t:.0f}/{h:.0f}"
            for c, t, h in zip(curve.coefs, curve.trait, curve.coherence, strict=True)
        )
        console.print(
            f"layer {curve.layer} ({curve.positions}) trait/coherence  {values}", highlight=False
        )
    console.print(f"chosen layer {result.layer} (at coef {result.reference_coef:+g})")
    if result.calibration is not None:
        cal = result.calibration
        text = f"{cal.coef:+.4g}" if cal.coef is not None else f"none ({cal.reason})"
        console.print(f"calibrated coefficient: {text}", highlight=False, markup=False)
    coef = recommended_coef(result)
    written = f"written to {result.vector_written}" if result.vector_written else "not written"
    console.print(
        f"recommended: layer {result.layer}, coef {'none' if coef is None else f'{coef:+.4g}'} "
        f"({'relative' if result.relative else 'raw'}; {written})",
        highlight=False,
        markup=False,
    )
    console.print(
        f"generation: {result.tokens_per_s:.1f} tokens/s; report: {result.run_dir}/report.html",
        highlight=False,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` and ``sweep`` to ``app`` (calling it twice is harmless)."""
    registered = {info.name for info in app.registered_commands}
    if "evaluate" not in registered:
        app.command("evaluate")(evaluate_command)
    if "sweep" not in registered:
        app.command("sweep")(sweep_command)

"""``personavec compare-estimators``: a thin wrapper over
:func:`personavec.pipeline.compare_estimators.compare_estimators`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    JudgeConcurrencyOption,
    JudgeTimeoutOption,
    ModelOption,
    console,
    friendly_errors,
)


@friendly_errors
def compare_estimators_command(
    trait: Annotated[str, typer.Option("--trait", "-t", help="Trait name or trait JSON file.")],
    vector: Annotated[Path, typer.Option(help="Persona-vector file holding the estimators.")],
    layers: Annotated[
        str | None, typer.Option(help="Layers: 16, 14-18 or 8-20:4; default: the file's.")
    ] = None,
    coef: Annotated[
        float, typer.Option(help="Relative strength (× typical norm), used with both signs.")
    ] = 0.2,
    estimators: Annotated[
        str | None, typer.Option(help="Estimators to compare (default: all the file holds).")
    ] = None,
    questions: Annotated[
        int | None, typer.Option(help="Held-out evaluation questions (default: all).")
    ] = None,
    instructions: Annotated[
        int, typer.Option(help="Instruction pairs for the held-out separation answers.")
    ] = 1,
    samples: Annotated[int, typer.Option(help="Answers per question.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 48,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    positions: Annotated[str, typer.Option(help="Steered positions: all, prompt, response.")] = (
        "all"
    ),
    label_threshold: Annotated[
        float, typer.Option(help="Held-out answers judged ≥ this exhibit the trait.")
    ] = 50.0,
    judge: Annotated[
        str, typer.Option(help="Trait judge: contrast (offline), embedding or openai:MODEL.")
    ] = "contrast",
    coherence_judge: Annotated[
        str, typer.Option(help="Coherence judge: heuristic or openai:MODEL.")
    ] = "heuristic",
    judge_timeout: JudgeTimeoutOption = None,
    judge_concurrency: JudgeConcurrencyOption = 8,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start the run directory afresh.")] = False,
    write: Annotated[
        bool,
        typer.Option("--write/--no-write", help="Store the best estimator per use in the vector."),
    ] = False,
    model: ModelOption = "smollm2",
    force: Annotated[bool, typer.Option(help="Use a vector from a related model.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Compare mean-diff, PCA and the probe per layer: held-out separation, steering effect,
    coherence, relevance and an AxBench-style harmonic mean; report and plots."""
    from personavec.core.grammar import parse_layers, split_list
    from personavec.core.models import load_model
    from personavec.core.vector import PersonaVector
    from personavec.pipeline.compare_estimators import compare_estimators, stored_estimators
    from personavec.traits.library import load_trait

    spec = load_trait(trait)
    pv = PersonaVector.load(vector, estimator="mean-diff")  # the file form: every estimator
    layer_list = parse_layers(layers, pv.meta.n_layers) if layers else None
    names = stored_estimators(pv, split_list(estimators) if estimators else None)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(trait).stem}-{vector.stem}").strip("-")
    loaded = load_model(model, device=device, dtype=dtype)
    result = compare_estimators(
        loaded,
        spec,
        pv,
        layers=layer_list,
        coef=coef,
        estimators=names,
        questions=questions,
        instructions=instructions,
        samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        positions=positions,
        label_threshold=label_threshold,
        judge=judge,
        coherence_judge=coherence_judge,
        run_dir=out if out is not None else Path("runs") / f"estimators-{slug}",
        write=write,
        overwrite=overwrite,
        force=force,
        show_progress=not quiet,
        judge_timeout_s=judge_timeout,
        judge_concurrency=judge_concurrency,
    )
    for row in result.rows:
        console.print(
            f"layer {row.layer} {row.estimator:>9}: AUROC {row.auroc:.2f}  d {row.cohens_d:+.2f}"
            f"  Δtrait {row.toward.trait_change:+.1f} / {row.away.trait_change:+.1f}"
            f"  coherence {row.toward.coherence:.0f} / {row.away.coherence:.0f}"
            f"  harmonic {row.toward.harmonic:.3f}",
            highlight=False,
            markup=False,
        )
    best = ", ".join(f"{use}: {name}" for use, name in result.recommended().items())
    written = f"; written to {vector}" if write else ""
    console.print(f"best: {best}{written}", highlight=False, markup=False)
    console.print(f"report: {result.report_path}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``compare-estimators`` to ``app`` (calling it twice is harmless)."""
    if "compare-estimators" not in {info.name for info in app.registered_commands}:
        app.command("compare-estimators")(compare_estimators_command)

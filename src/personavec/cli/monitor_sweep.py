"""``personavec monitor-sweep``: the prompt-induced shift experiment (monitoring)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    console,
    first_error,
    friendly_errors,
)
from personavec.errors import PersonavecError, VectorFileError

if TYPE_CHECKING:
    from personavec.core.vector import PersonaVector
    from personavec.pipeline.monitor_sweep_types import MonitorSweepResult


def _precheck_vector(vector: Any, model: str) -> None:
    """Fail fast, before loading weights, when the vector was made for another model."""
    from personavec.core.models import load_config
    from personavec.core.vector import config_fingerprint

    config = load_config(model)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if hidden is not None and int(hidden) != vector.meta.hidden_size:
        raise VectorFileError(
            f"vector is for hidden size {vector.meta.hidden_size} ({vector.meta.model_id}) but "
            f"{model} has {hidden}; extract a vector for this model"
        )
    if config_fingerprint(config) != vector.meta.model_fingerprint:
        raise VectorFileError(
            f"vector was extracted from {vector.meta.model_id}, not {model}; "
            "use a vector extracted from this model"
        )


@friendly_errors
def monitor_sweep_command(
    trait: Annotated[str, typer.Option("--trait", "-t", help="Trait name or trait JSON file.")],
    vector: Annotated[Path, typer.Option("--vector", "-v", help="Persona-vector file.")],
    layer: Annotated[
        int | None, typer.Option(help="Layer to project at; default the vector's recommended.")
    ] = None,
    questions: Annotated[int, typer.Option(help="First N evaluation questions.")] = 10,
    samples: Annotated[int, typer.Option(help="Answers per configuration × question.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 64,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    judge: Annotated[
        str, typer.Option(help="contrast (offline, default), embedding or openai:MODEL.")
    ] = "contrast",
    many_shot: Annotated[
        bool, typer.Option("--many-shot/--no-many-shot", help="Also run many-shot prompts.")
    ] = True,
    shots: Annotated[
        str, typer.Option(help="Comma-separated many-shot example counts.")
    ] = "0,5,10,15,20",
    ladder: Annotated[
        Path | None,
        typer.Option(help='JSON list of 8 system prompts, suppressing first ("" = none).'),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/monitor-…).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    judge_base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible URL (or OPENAI_BASE_URL).")
    ] = None,
    judge_api_key: Annotated[
        str | None, typer.Option(help="API key (or OPENAI_API_KEY); never saved.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Start the run directory afresh.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    model: ModelOption = "smollm2",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Correlate the last-prompt-token projection with the judged trait of the answers."""
    from personavec.core.models import load_model
    from personavec.pipeline.monitor_sweep import MonitorSweepConfig, read_ladder
    from personavec.pipeline.monitor_sweep import run_monitor_sweep as run

    settings: dict[str, Any] = {
        "trait": trait,
        "model": model,
        "layer": layer,
        "judge": judge,
        "n_questions": questions,
        "samples": samples,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "shots": parse_shots(shots) if many_shot else [],
        "ladder": read_ladder(ladder) if ladder is not None else None,
        "batch_size": batch_size,
    }
    try:
        config = MonitorSweepConfig(**settings)
    except ValueError as exc:
        raise PersonavecError(f"invalid sweep settings: {first_error(exc)}") from None
    persona_vector = load_checked_vector(vector, trait, layer, model)
    loaded = load_model(
        model, device=None if device == "auto" else device, dtype=None if dtype == "auto" else dtype
    )
    result = run(
        config,
        loaded,
        persona_vector,
        layer,
        run_dir=out,
        overwrite=overwrite,
        show_progress=not quiet,
        judge_base_url=judge_base_url,
        judge_api_key=judge_api_key,
    )
    print_summary(result)


def parse_shots(text: str) -> list[int]:
    """``"0,5,10"`` → ``[0, 5, 10]``."""
    from personavec.core.grammar import parse_numbers

    return parse_numbers(text, int, "--shots", "0,5,10")


def load_checked_vector(path: Path, trait: str, layer: int | None, model: str) -> PersonaVector:
    """The vector file, checked against the trait, the layer and the model (before loading it)."""
    from personavec.core.vector import PersonaVector
    from personavec.pipeline.monitor_sweep import resolve_layer
    from personavec.traits.library import load_trait

    spec = load_trait(trait)
    persona_vector = PersonaVector.load(path)
    if persona_vector.meta.trait != spec.name:
        raise PersonavecError(
            f"{path} is a {persona_vector.meta.trait!r} vector, not {spec.name!r}; pass the "
            "matching --trait or --vector"
        )
    resolve_layer(persona_vector, layer)
    _precheck_vector(persona_vector, model)
    return persona_vector


def print_summary(result: MonitorSweepResult) -> None:
    summary = result.summary

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    console.print(
        f"[bold green]done:[/] layer {result.layer}, {summary['scored_rows']} scored answers; "
        f"overall r = {fmt(summary['overall']['pearson_r'])}, between configuration means "
        f"r = {fmt(summary['config_means_r'])}, within configurations "
        f"r = {fmt(summary['within_config_pooled_r'])}"
    )
    console.print(f"report: {result.report_path}")


def register(app: typer.Typer) -> None:
    """Add the ``monitor-sweep`` command to ``app`` (calling it twice is harmless)."""
    registered = {info.name for info in app.registered_commands}
    if "monitor-sweep" not in registered:
        app.command("monitor-sweep")(monitor_sweep_command)

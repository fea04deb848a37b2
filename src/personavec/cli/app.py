"""The ``personavec`` command line: a thin layer over the library.

Every command maps to a library function; errors a user can fix print one line
(``error: …``) and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from personavec import __version__
from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    EngineOption,
    EstimatorOption,
    ModelOption,
    console,
    err_console,
    friendly_errors,
    print_answers,
    setting_from_options,
    use_estimator,
)
from personavec.errors import PersonavecError

if TYPE_CHECKING:
    from personavec.core.setting import SteeringSetting

__all__ = ["app", "console", "err_console", "friendly_errors", "main"]

RelativeFlag = Annotated[
    bool | None,
    typer.Option(
        "--relative/--raw",
        help="Coefficient as a fraction of the layer's typical norm, or raw "
        "(default raw, or as calibrated in the file).",
    ),
]

app = typer.Typer(
    name="personavec",
    help="Persona vectors: extract, steer, monitor and guard character traits in LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
@friendly_errors
def main_callback(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
    estimator: EstimatorOption = None,
) -> None:
    use_estimator(estimator, ctx)
    if version:
        console.print(f"personavec {__version__}")
        raise typer.Exit()


@app.command()
@friendly_errors
def info(
    model: Annotated[str, typer.Argument(help="Model spec: smollm2, a .gguf, a directory.")] = (
        "smollm2"
    ),
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    show_template: Annotated[bool, typer.Option(help="Print the whole chat template.")] = False,
) -> None:
    """Layers, hidden size, chat template and typical residual norm per layer."""
    from personavec.core.model_report import model_info

    report = model_info(model, device=device, dtype=dtype)
    table = Table(title=f"{report.model_id}", show_header=False)
    table.add_row("architecture", report.architecture)
    table.add_row("decoder blocks", f"{report.n_layers} (layers 0..{report.n_layers})")
    table.add_row("hidden size", str(report.hidden_size))
    table.add_row("parameters", f"{report.parameters / 1e6:.1f} M")
    table.add_row("device / dtype", f"{report.device} / {report.dtype}")
    table.add_row("fingerprint", report.fingerprint)
    table.add_row("blocks at", report.blocks_path)
    console.print(table)
    console.print("[bold]Chat prompt for 'Hello!'[/] (as the model sees it):")
    console.print(report.example_prompt, markup=False, highlight=False)
    if show_template and report.chat_template:
        console.print(report.chat_template, markup=False, highlight=False)
    norms = Table(title="Typical residual norm per layer (mean L2 over response tokens)")
    norms.add_column("layer", justify="right")
    norms.add_column("norm", justify="right")
    for layer, norm in enumerate(report.typical_norm):
        norms.add_row(str(layer), f"{norm:.2f}")
    console.print(norms)


@app.command()
@friendly_errors
def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more user messages.")],
    model: ModelOption = "smollm2",
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    vector: Annotated[Path | None, typer.Option(help="Persona-vector file to steer with.")] = None,
    layer: Annotated[
        str | None, typer.Option(help="Layer(s): 12, 8,12, 8-16 or 8-20:4; default: the file's.")
    ] = None,
    coef: Annotated[float | None, typer.Option(help="Coefficient; default: the file's.")] = None,
    positions: Annotated[
        str | None,
        typer.Option(help="all, prompt or response (default all, or as calibrated in the file)."),
    ] = None,
    op: Annotated[str, typer.Option(help="add, ablate or cap.")] = "add",
    threshold: Annotated[
        str | None,
        typer.Option(help="--op cap: projection to cap at, a number or pNN (e.g. p95)."),
    ] = None,
    mode: Annotated[str, typer.Option(help="Several layers: stack or incremental.")] = "stack",
    relative: RelativeFlag = None,
    compare: Annotated[bool, typer.Option(help="Also print the unsteered answer.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 96,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    force: Annotated[bool, typer.Option(help="Use a vector from another model.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    engine: EngineOption = "hf",
) -> None:
    """Answer prompts, optionally steered by a persona vector."""
    from personavec.core.models import load_model
    from personavec.engines.answering import generate_answers
    from personavec.engines.factory import check_engine
    from personavec.engines.generation import SamplingConfig

    # Every argument and file is checked before the model loads.
    check_engine(engine)
    setting = _setting_from_options(vector, layer, coef, positions, op, threshold, mode, relative)
    config = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    loaded = load_model(model, device=device, dtype=dtype)
    if setting is not None:
        setting.check_compatible(loaded.model, force=force)
        console.print(setting.describe(), style="dim", markup=False, highlight=False)
    steered = generate_answers(
        loaded, prompts, config, system=system, steering=setting, engine=engine
    )
    plain = None
    if compare and setting is not None:
        plain = generate_answers(loaded, prompts, config, system=system, engine=engine)
    print_answers(prompts, steered, plain, "steered" if setting is not None else "assistant")


def _setting_from_options(
    vector: Path | None,
    layer: str | None,
    coef: float | None,
    positions: str | None,
    op: str,
    threshold: str | None,
    mode: str,
    relative: bool | None,
) -> SteeringSetting | None:
    """The steering setting named by ``generate``'s options (None: unsteered)."""
    if vector is None:
        if any(x is not None for x in (layer, coef, threshold)):
            raise PersonavecError("--layer/--coef/--threshold need --vector FILE")
        return None
    return setting_from_options(
        vector,
        layer=layer,
        coef=coef,
        relative=relative,
        positions=positions,
        op=op,
        mode=mode,
        threshold=threshold,
    )


@app.command("export-gguf")
@friendly_errors
def export_gguf_command(
    vector: Annotated[Path, typer.Argument(help="Persona-vector file (.safetensors).")],
    output: Annotated[Path, typer.Argument(help="Control-vector file to write (.gguf).")],
    layer: Annotated[str | None, typer.Option(help="Layer(s); default: the file's.")] = None,
    coef: Annotated[
        float | None, typer.Option(help="Coefficient baked in; default: the file's.")
    ] = None,
    relative: RelativeFlag = None,
) -> None:
    """Write a llama.cpp control vector (layer numbering mapped to llama.cpp's).

    The coefficient, its unit and the layer default to the file's calibration, exactly as for
    ``generate``; llama.cpp steers every position, so positions are ``all``.
    """
    from personavec.interop.gguf_export import export_gguf

    setting = setting_from_options(
        vector, layer=layer, coef=coef, relative=relative, positions="all"
    )
    path = export_gguf(setting, output)
    console.print(f"wrote {path} ({escape(setting.describe())})", highlight=False)
    console.print(
        f"use: llama-cli -m MODEL.gguf --control-vector {path} "
        f"(or --control-vector-scaled {path} STRENGTH)",
        style="dim",
        markup=False,
        highlight=False,
    )


def _mount_subapps() -> None:
    from personavec.cli.compare_estimators import register as register_compare_estimators
    from personavec.cli.evaluate import register as register_eval
    from personavec.cli.extract import register as register_extract
    from personavec.cli.geometry import register as register_geometry
    from personavec.cli.judge_check import register as register_judge_check
    from personavec.cli.monitor import register as register_monitor
    from personavec.cli.monitor_sweep import register as register_monitor_sweep
    from personavec.cli.prevent import register as register_prevent
    from personavec.cli.project import register as register_project
    from personavec.cli.screen import register as register_screen
    from personavec.cli.serve import register as register_serve
    from personavec.cli.steer import register as register_steer
    from personavec.cli.training import register as register_training
    from personavec.cli.trait import trait_app

    app.add_typer(trait_app, name="trait", help="List, show, validate and create trait files.")
    register_extract(app)
    register_project(app)
    register_geometry(app)
    register_steer(app)
    register_monitor(app)
    register_monitor_sweep(app)
    register_eval(app)
    register_screen(app)
    register_serve(app)
    register_training(app)
    register_prevent(app)
    register_judge_check(app)
    register_compare_estimators(app)


_mount_subapps()


def main() -> None:
    """Console entry point."""
    try:
        app()
    except BrokenPipeError:  # e.g. piped into `head`
        sys.exit(0)


if __name__ == "__main__":
    main()

"""``personavec geometry``: how persona vectors relate (cosines) and predict each other."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from personavec.cli.common import DeviceOption, DtypeOption, ModelOption, console, friendly_errors

if TYPE_CHECKING:
    import torch

    from personavec.core.vector import PersonaVector
    from personavec.pipeline.geometry import CrossPrediction


@friendly_errors
def geometry_command(
    vectors: Annotated[list[Path], typer.Argument(help="Persona-vector files (one per trait).")],
    runs: Annotated[
        list[Path] | None,
        typer.Option(
            "--runs", "-r", help="Extraction run directory with scored.jsonl (repeatable)."
        ),
    ] = None,
    layer: Annotated[
        int | None,
        typer.Option(
            help="Layer of the heat map and the projections; default: most common "
            "recommended layer, else the middle."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Report directory.")] = Path("runs/geometry"),
    readout: Annotated[str, typer.Option(help="Vector readout to compare.")] = "response_avg",
    model: ModelOption = "smollm2",
    force: Annotated[bool, typer.Option(help="Use vectors from a related model.")] = False,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 8,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Cosine similarity between trait vectors per layer, and (with --runs) cross-prediction."""
    from personavec.core.layers import check_layer
    from personavec.core.vector import PersonaVector
    from personavec.pipeline.geometry import cosine_matrix, default_layer
    from personavec.pipeline.geometry_report import write_geometry_report

    loaded_vectors = [PersonaVector.load(path) for path in vectors]
    names, cos = cosine_matrix(loaded_vectors, readout)
    chosen = default_layer(loaded_vectors) if layer is None else layer
    check_layer(chosen, loaded_vectors[0].meta.n_layers)
    cross = None
    if runs:
        options = {"readout": readout, "force": force, "batch_size": batch_size}
        cross = run_cross_prediction(runs, loaded_vectors, chosen, model, device, dtype, options)
    written = write_geometry_report(out, loaded_vectors, layer=chosen, readout=readout, cross=cross)
    print_geometry(names, cos, chosen, cross)
    console.print(f"wrote {len(written)} files to {out}", highlight=False)


def run_cross_prediction(
    runs: list[Path],
    vectors: list[PersonaVector],
    layer: int,
    model: str,
    device: str,
    dtype: str,
    options: dict[str, Any],
) -> CrossPrediction:
    """Read the runs (bad ones are reported before the model loads), then cross-predict."""
    from personavec.core.models import load_model
    from personavec.pipeline.geometry import cross_prediction, read_run

    run_data = [read_run(path) for path in runs]
    loaded = load_model(model, device=device, dtype=dtype)
    return cross_prediction(loaded, run_data, vectors, layer, **options)


def print_geometry(
    names: list[str], cos: torch.Tensor, layer: int, cross: CrossPrediction | None
) -> None:
    """Each pair's cosine at ``layer`` and each run's cross-prediction r, on the console."""
    from personavec.pipeline.geometry import pairs

    console.print(f"layer {layer}: cosine similarity", highlight=False)
    for i, j in pairs(names):
        console.print(
            f"  {names[i]} · {names[j]} = {float(cos[i, j, layer]):+.3f}", highlight=False
        )
    if cross is not None:
        for i, run in enumerate(cross.runs):
            cells = ", ".join(
                f"{v}={r:+.2f}" for v, r in zip(cross.vectors, cross.r[i], strict=True)
            )
            console.print(f"  run {run} ({cross.run_traits[i]}): r {cells}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``geometry`` command to ``app`` (calling it twice is harmless)."""
    registered = {info.name for info in app.registered_commands}
    if "geometry" not in registered:
        app.command("geometry")(geometry_command)

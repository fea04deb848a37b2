"""``personavec project``: add persona-vector projections to every row of a JSONL file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personavec.cli.common import DeviceOption, DtypeOption, ModelOption, console, friendly_errors


@friendly_errors
def project_command(
    input: Annotated[Path, typer.Argument(help="JSONL: messages, prompt/response or text rows.")],
    vector: Annotated[
        list[Path], typer.Option("--vector", "-v", help="Persona-vector file (repeatable).")
    ],
    layer: Annotated[
        int | None, typer.Option(help="Layer for every vector; default: each file's.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output JSONL (default INPUT.projected.jsonl).")
    ] = None,
    per_token: Annotated[bool, typer.Option(help="Also write per-token projections.")] = False,
    model: ModelOption = "smollm2",
    force: Annotated[bool, typer.Option(help="Use a vector from a related model.")] = False,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 8,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Project conversations onto persona vectors; write the rows with proj.* columns."""
    from personavec.core.models import load_model
    from personavec.pipeline.project import project_file, read_input, summarize
    from personavec.store import read_jsonl

    read_input(input)  # report bad rows before loading the model
    loaded = load_model(model, device=device, dtype=dtype)
    path = project_file(loaded, input, out, vector, layer, per_token, force, batch_size=batch_size)
    rows = read_jsonl(path)
    console.print(f"wrote {len(rows)} rows to {path}")
    for name, mean in summarize(rows).items():
        console.print(f"  mean {name} = {mean:.3f}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``project`` command to ``app`` (calling it twice is harmless)."""
    registered = {info.name for info in app.registered_commands}
    if "project" not in registered:
        app.command("project")(project_command)

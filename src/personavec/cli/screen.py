"""``personavec screen``: projection-difference screening of chat data (library: screening.api)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personavec.cli.common import ModelOption, console, err_console, friendly_errors


@friendly_errors
def screen_command(
    data: Annotated[
        str,
        typer.Argument(help="Messages or prompt/response JSONL, Parquet, or a saved dataset dir."),
    ],
    vector: Annotated[
        list[Path],
        typer.Option("--vector", "-v", help="Persona-vector file (repeatable)."),
    ],
    model: ModelOption = "smollm2",
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory (default runs/screen-DATA)."),
    ] = None,
    layer: Annotated[
        int | None,
        typer.Option(help="Layer for every vector; default each file's."),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(help="full (own responses, ΔP) or prompt (last prompt token; no generation)."),
    ] = "full",
    own_column: Annotated[
        str | None,
        typer.Option(help="Column holding the model's own responses (no generation)."),
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option(help="Score a seeded random subsample of N rows."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Subsample seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per own response (greedy).")] = 256,
    on_bad: Annotated[
        str,
        typer.Option(help="error (reject bad rows) or skip (report and skip)."),
    ] = "error",
    reference: Annotated[
        str | None,
        typer.Option(help="Clean data; percentile thresholds come from its ΔP."),
    ] = None,
    drop_above: Annotated[
        str | None,
        typer.Option(help="Threshold: a ΔP value (1.5) or percentile (p95)."),
    ] = None,
    write_filtered: Annotated[
        str | None,
        typer.Option(
            help="Write the kept rows to this JSONL (an existing file needs --overwrite)."
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(help="local (in-process) or ray (a pool of Ray model actors)."),
    ] = "local",
    generator: Annotated[
        str,
        typer.Option(help="Engine of the own responses: hf or vllm (`make install-vllm`)."),
    ] = "hf",
    ray_address: Annotated[
        str | None,
        typer.Option(help="Existing Ray cluster; default: a local Ray."),
    ] = None,
    actors: Annotated[int, typer.Option(help="Ray: model actors.")] = 1,
    cpus_per_actor: Annotated[float, typer.Option(help="Ray: CPUs per actor.")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(help="Ray: GPUs per actor.")] = 0.0,
    force: Annotated[bool, typer.Option(help="Use a vector from a related model.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start the run directory afresh.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Projection difference ΔP of every sample (dataset vs model's own response), resumable."""
    from personavec.screening.api import screen
    from personavec.screening.ray_engine import RayOptions
    from personavec.screening.run import ScreenConfig

    config = ScreenConfig(
        data=data,
        vectors=[str(v) for v in vector],
        model=model,
        layer=layer,
        mode=mode,  # type: ignore[arg-type]
        own_column=own_column,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        sample=sample,
        seed=seed,
        on_bad=on_bad,  # type: ignore[arg-type]
        force=force,
        generator=generator,
    )
    run_dir = out or Path("runs") / f"screen-{Path(data).name.split('.')[0]}"
    ray = RayOptions(ray_address, actors, cpus_per_actor, gpus_per_actor)
    result = screen(
        config,
        run_dir,
        engine=engine,  # type: ignore[arg-type]
        ray=ray,
        reference=reference,
        drop_above=drop_above,
        write_filtered_to=write_filtered,
        overwrite=overwrite,
        show_progress=not quiet,
    )
    for name, entry in result.summary["vectors"].items():
        d = entry["delta"]
        console.print(
            f"{name}: ΔP {d['mean']:.4f} (95 % CI {d['low']:.4f} … {d['high']:.4f}, n {d['n']})",
            highlight=False,
        )
    if result.filtered is not None:
        console.print(
            f"kept {result.filtered.kept}, dropped {result.filtered.dropped} "
            f"→ {result.filtered.path}"
        )
    console.print(f"table: {result.table}\nreport: {result.run_dir / 'report.md'}")
    if quiet:
        return
    err_console.print("[dim]resume with the same command; --overwrite starts afresh[/]")


def register(app: typer.Typer) -> None:
    """Add the ``screen`` command to ``app`` (calling it twice is harmless)."""
    if "screen" not in {info.name for info in app.registered_commands}:
        app.command("screen")(screen_command)

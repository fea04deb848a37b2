"""``personavec monitor``: answer prompts while watching per-token persona-vector projections."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from personavec.cli.common import DeviceOption, DtypeOption, ModelOption, console, friendly_errors
from personavec.errors import PersonavecError

_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between the values' min and max."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    if span == 0:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(7, int((v - low) / span * 8))] for v in values)


def _colour(value: float, centre: float, scale: float) -> str:
    """Blue (below ``centre``) → grey → red (above), as an ``rgb(...)`` Rich colour."""
    x = max(-1.0, min(1.0, (value - centre) / scale)) if scale > 0 else 0.0
    if x >= 0:
        return f"rgb({200 + int(55 * x)},{200 - int(160 * x)},{200 - int(160 * x)})"
    x = -x
    return f"rgb({200 - int(160 * x)},{200 - int(120 * x)},{200 + int(55 * x)})"


@friendly_errors
def monitor_command(
    prompts: Annotated[list[str], typer.Argument(help="One or more user messages.")],
    vector: Annotated[
        list[Path], typer.Option("--vector", "-v", help="Persona-vector file (repeatable).")
    ],
    layer: Annotated[
        int | None, typer.Option(help="Layer for every vector; default: each file's.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Alert when a generated token's projection exceeds it.")
    ] = None,
    steer_back: Annotated[
        float | None,
        typer.Option(help="Subtract COEF·v (first vector) at answer tokens above --threshold."),
    ] = None,
    log: Annotated[Path | None, typer.Option(help="Append readings to this SQLite file.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    model: ModelOption = "smollm2",
    force: Annotated[bool, typer.Option(help="Use a vector from a related model.")] = False,
    live: Annotated[
        bool | None,
        typer.Option(
            "--live/--no-live",
            help="Show the answer and meter while generating (default: on a terminal, 1 prompt).",
        ),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Answer prompts with per-token projections: coloured tokens, meters and alerts."""
    from personavec.core.models import chat_messages, load_model
    from personavec.core.vector import PersonaVector
    from personavec.monitor.monitor import (
        LiveMeter,
        ReadingLog,
        generate_monitored,
    )

    if steer_back is not None and threshold is None:
        raise PersonavecError("--steer-back needs --threshold T (steer only above it)")
    vectors = [PersonaVector.load(path) for path in vector]
    specs = _monitor_specs(vector, vectors, layer, threshold)
    conditional = _steer_back(vectors[0], specs[0], threshold, steer_back)
    reading_log = ReadingLog(log) if log is not None else None
    show_live = live if live is not None else (console.is_terminal and len(prompts) == 1)
    if show_live and len(prompts) != 1:
        raise PersonavecError("--live shows one answer at a time; pass a single prompt")
    loaded = load_model(model, device=device, dtype=dtype)
    for pv in vectors:
        pv.check_compatible(loaded.model, force=force)
    streamer = LiveMeter(loaded.tokenizer, console) if show_live else None
    answers = generate_monitored(
        loaded,
        [chat_messages(p, system=system) for p in prompts],
        specs,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        conditional=conditional,
        alert_prompt_last=True,
        log=reading_log,
        streamer=streamer,
    )
    for prompt, answer in zip(prompts, answers, strict=True):
        _print_answer(loaded.tokenizer, prompt, answer, specs, threshold)
        if conditional:
            console.print(
                f"  steered back at {len(answer.steered)} token(s) (coef {steer_back:g})",
                highlight=False,
            )
    if reading_log is not None:
        where = f"readings logged to {log} (session {reading_log.session})"
        console.print(where, highlight=False, markup=False)


def _steer_back(pv: Any, spec: Any, threshold: float | None, steer_back: float | None) -> list[Any]:
    """``--steer-back COEF``: subtract ``COEF·v`` at answer tokens above ``--threshold``.

    Validated as a :class:`SteeringSetting` first (layer, strength against the typical norm,
    zero vector), so nonsense fails before the model loads.
    """
    from personavec.core.setting import SteeringSetting
    from personavec.monitor.monitor import ConditionalSteering

    if steer_back is None or threshold is None:
        return []
    back = SteeringSetting.from_vector(pv, [spec.layer], -steer_back, "raw", "response")
    return [ConditionalSteering(spec, threshold, -back.coef, back.positions)]


def _monitor_specs(
    paths: list[Path], vectors: list[Any], layer: int | None, threshold: float | None
) -> list[Any]:
    """One monitor spec per vector, named by its trait (made unique with the file stem)."""
    from personavec.monitor.monitor import MonitorSpec

    specs: list[Any] = []
    for path, pv in zip(paths, vectors, strict=True):
        name = pv.meta.trait
        if any(s.name == name for s in specs):
            name = f"{name}:{path.stem}"
        specs.append(MonitorSpec.from_vector(pv, layer, name=name, threshold=threshold))
    return specs


def _print_answer(
    tokenizer: Any, prompt: str, answer: Any, specs: list[Any], threshold: float | None
) -> None:
    """Coloured answer tokens, per-vector statistics and alerts for one answer."""
    console.print(f"[bold cyan]user:[/] {escape(prompt)}", highlight=False)
    prompt_len = len(answer.prompt_ids)
    by_position = {r.position: r for r in answer.readings}
    generated = [r for r in answer.readings if not r.is_prompt]
    first = specs[0].name
    values = [r.values[first] for r in generated]
    centre = threshold if threshold is not None else (statistics.median(values) if values else 0)
    scale = max((abs(v - centre) for v in values), default=0.0)
    text = Text("assistant: ", style="bold green")
    for offset, token_id in enumerate(answer.response_ids):
        piece = str(tokenizer.decode([token_id], skip_special_tokens=True))
        reading = by_position.get(prompt_len + offset)
        style = _colour(reading.values[first], centre, scale) if reading else "dim"
        text.append(piece, style=style)
    console.print(text)
    last_prompt = next((r for r in reversed(answer.readings) if r.is_prompt), None)
    for spec in specs:
        series = [r.values[spec.name] for r in generated]
        last = f"{last_prompt.values[spec.name]:+.2f}" if last_prompt else "n/a"
        stats = "no generated tokens read"
        if series:
            stats = (
                f"min {min(series):+.2f}  mean {statistics.fmean(series):+.2f}  "
                f"max {max(series):+.2f}"
            )
        console.print(
            f"  [bold]{escape(spec.name)}[/] L{spec.layer}  {stats}  last-prompt {last}  "
            f"{sparkline(series)}",
            highlight=False,
        )
    for alert in answer.alerts:
        where = "last prompt token" if alert.token_index < prompt_len else "token"
        token = ""
        if alert.token_index >= prompt_len:
            offset = alert.token_index - prompt_len
            ids = answer.response_ids
            piece = str(tokenizer.decode([ids[offset]])) if offset < len(ids) else "<end>"
            token = f" {piece!r}"
        console.print(
            f"  [bold red]alert:[/] {where} {alert.token_index}{escape(token)} "
            f"{escape(alert.name)} = {alert.value:+.2f} > {threshold:g}",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add the ``monitor`` command to ``app`` (calling it twice is harmless)."""
    registered = {info.name for info in app.registered_commands}
    if "monitor" not in registered:
        app.command("monitor")(monitor_command)

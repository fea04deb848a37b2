"""``personavec steer``, ``chat`` and ``perplexity``: steering with one or more persona vectors.

Each ``--steer`` takes ``FILE[:layer[:coef[:positions[:op]]]]``
(see :mod:`personavec.core.setting`); all of them are applied together. Spec strings are parsed
and their vector files read before the model loads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    EngineOption,
    ModelOption,
    console,
    friendly_errors,
    print_answers,
)
from personavec.errors import PersonavecError

if TYPE_CHECKING:
    from personavec.core.models import LoadedModel
    from personavec.core.setting import SteeringSetting

SteerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--steer",
        "-s",
        help="FILE[:layer[:coef[:positions[:op]]]] (repeatable; all applied together). "
        "Missing parts: the file's layer and coef, positions all, op add. For op cap the "
        "coef part is the threshold (a number or pNN).",
    ),
]
OpOption = Annotated[str, typer.Option(help="Operator for specs that name none: add, ablate, cap.")]
ThresholdOption = Annotated[
    str | None,
    typer.Option(help="Cap threshold for cap specs that give none: a number or pNN (e.g. p95)."),
]
RelativeOption = Annotated[
    bool | None,
    typer.Option(
        "--relative/--raw",
        help="Coefficients as fractions of the layer's typical norm, or raw "
        "(default raw, or as calibrated in the file).",
    ),
]
ForceOption = Annotated[bool, typer.Option(help="Use vectors from another model.")]
MaxTokensOption = Annotated[int, typer.Option(help="Tokens to generate per answer.")]
TemperatureOption = Annotated[float, typer.Option(help="0 = greedy.")]
TopPOption = Annotated[float, typer.Option(help="Nucleus sampling mass.")]
SeedOption = Annotated[int, typer.Option(help="Sampling seed.")]


def parse_specs(
    specs: list[str] | None,
    relative: bool | None,
    op: str = "add",
    threshold: str | None = None,
) -> list[SteeringSetting]:
    """Every ``--steer`` as a setting (vector files read; no model needed yet)."""
    from personavec.core.setting import parse_steer_spec, unit_of

    settings = [
        parse_steer_spec(s, unit=unit_of(relative), op=op, threshold=threshold) for s in specs or []
    ]
    if threshold is not None and not any(s.op == "cap" for s in settings):
        raise PersonavecError("--threshold is for cap steering; pass --op cap or a ':cap' spec")
    return settings


def _load_checked(
    model: str, device: str, dtype: str, settings: list[SteeringSetting], force: bool
) -> LoadedModel:
    """Load the model and check every setting's vector fits it."""
    from personavec.core.models import load_model

    loaded = load_model(model, device=device, dtype=dtype)
    for setting in settings:
        setting.check_compatible(loaded.model, force=force)
    return loaded


def _prompt_row(row: Any, where: str, system: str | None) -> tuple[str, list[dict[str, str]]]:
    from personavec.runs.chat_rows import parse_chat_row

    chat = [dict(m) for m in parse_chat_row(row, where, "prompt").prompt]  # the one row parser
    if system is not None and chat[0]["role"] != "system":
        chat.insert(0, {"role": "system", "content": system})
    return chat[-1]["content"], chat


def _one_turn(prompt: str, system: str | None) -> list[dict[str, str]]:
    from personavec.core.models import chat_messages

    return chat_messages(prompt, system=system)


def read_prompts(path: Path, system: str | None) -> list[tuple[str, list[dict[str, str]]]]:
    """``(prompt, messages)`` per line of a text file (one prompt a line) or a JSONL file."""
    if not path.is_file():
        raise PersonavecError(f"prompts file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonavecError(f"cannot read {path} as UTF-8 text: {exc}") from None
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if jsonl or line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if jsonl:
                    raise PersonavecError(f"{where} is not valid JSON") from None
                out.append((line.strip(), _one_turn(line.strip(), system)))
                continue
            out.append(_prompt_row(row, where, system))
        else:
            out.append((line.strip(), _one_turn(line.strip(), system)))
    if not out:
        raise PersonavecError(f"{path} holds no prompts")
    return out


@friendly_errors
def steer_command(
    steer: SteerOption = None,
    question: Annotated[
        list[str] | None, typer.Option("--question", "-q", help="A user message (repeatable).")
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="File: one prompt a line, or JSONL rows with 'prompt' or 'messages'."),
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    compare: Annotated[bool, typer.Option(help="Also answer unsteered.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write rows to this JSONL file.")] = None,
    model: ModelOption = "smollm2",
    relative: RelativeOption = None,
    op: OpOption = "add",
    threshold: ThresholdOption = None,
    max_new_tokens: MaxTokensOption = 96,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    seed: SeedOption = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    engine: EngineOption = "hf",
) -> None:
    """Answer prompts steered by one or more persona vectors (optionally also unsteered)."""
    from personavec.engines.answering import answer_chats
    from personavec.engines.factory import check_engine
    from personavec.engines.generation import SamplingConfig
    from personavec.interfaces.chat import describe_all

    check_engine(engine)
    settings = parse_specs(steer, relative, op, threshold)  # before the model loads
    if not settings:
        raise PersonavecError("give at least one --steer FILE[:layer[:coef[:positions[:op]]]]")
    items = _collect_prompts(question, prompts, system)
    config = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
    )
    loaded = _load_checked(model, device, dtype, settings, force)
    console.print(describe_all(settings), style="dim", markup=False, highlight=False)
    chats = [messages for _, messages in items]
    steered = answer_chats(loaded, chats, config, settings, engine=engine)
    plain = answer_chats(loaded, chats, config, engine=engine) if compare else None
    rows = _answer_rows(items, steered, plain, settings)
    if out is not None:
        _write_rows(out, rows)


def _collect_prompts(
    question: list[str] | None, prompts: Path | None, system: str | None
) -> list[tuple[str, list[dict[str, str]]]]:
    """``(prompt, messages)`` from ``--question`` and ``--prompts``; an error when none."""
    items = [(q, _one_turn(q, system)) for q in question or []]
    if prompts is not None:
        items.extend(read_prompts(prompts, system))
    if not items:
        raise PersonavecError("nothing to answer; pass --question TEXT or --prompts FILE")
    return items


def _answer_rows(
    items: list[tuple[str, list[dict[str, str]]]],
    steered: list[str],
    plain: list[str] | None,
    settings: list[SteeringSetting],
) -> list[dict[str, Any]]:
    """Print each answer and return the rows for ``--out``."""
    rows = []
    for index, (prompt, messages) in enumerate(items):
        row: dict[str, Any] = {"prompt": prompt, "messages": messages, "steered": steered[index]}
        if plain is not None:
            row["unsteered"] = plain[index]
        row["steering"] = [s.describe() for s in settings]
        rows.append(row)
    print_answers([prompt for prompt, _ in items], steered, plain, "steered")
    return rows


def _write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    from personavec.store import atomic_write_text

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(out, text)
    console.print(f"wrote {len(rows)} rows to {out}", markup=False, highlight=False)


def _stdin_is_terminal() -> bool:
    """Whether standard input is a terminal; a one-line error when it is closed or absent."""
    stdin = sys.stdin
    if stdin is None or stdin.closed:
        raise PersonavecError(
            "standard input is closed, so chat has nothing to read; run it in a terminal "
            "or pipe messages in (one per line)"
        )
    return stdin.isatty()


@friendly_errors
def chat_command(
    steer: SteerOption = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    model: ModelOption = "smollm2",
    relative: RelativeOption = None,
    max_new_tokens: MaxTokensOption = 128,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    seed: SeedOption = 0,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Chat with the model under persona vectors; /help lists the commands (works piped too)."""
    from personavec.core.setting import unit_of
    from personavec.engines.generation import SamplingConfig
    from personavec.interfaces.chat import ChatSession

    interactive = _stdin_is_terminal()  # a closed stdin fails before the model loads
    settings = parse_specs(steer, relative)
    config = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    loaded = _load_checked(model, device, dtype, settings, force)
    session = ChatSession(loaded, config, system=system, unit=unit_of(relative), force=force)
    for setting in settings:
        session.add(setting)
    console.print(session.describe(), style="dim", markup=False, highlight=False)
    if interactive:
        console.print("[dim]type /help for commands, /quit to leave[/]")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            try:
                result = session.command(text)
            except PersonavecError as exc:
                console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
                continue
            console.print(result.text, highlight=False, markup=False)
            if result.quit:
                break
            continue
        reply = session.send(text)
        console.print("[bold green]assistant:[/]", end=" ")
        console.print(reply, highlight=False, markup=False)


@friendly_errors
def perplexity_command(
    file: Annotated[Path, typer.Argument(help="UTF-8 text file to score.")],
    steer: SteerOption = None,
    model: ModelOption = "smollm2",
    window: Annotated[int, typer.Option(help="Tokens per forward pass.")] = 512,
    stride: Annotated[
        int | None, typer.Option(help="Tokens the window moves (default window/2).")
    ] = None,
    relative: RelativeOption = None,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Perplexity of a text file, unsteered and (with --steer) steered, and the change."""
    from personavec.interfaces.chat import describe_all
    from personavec.metrics.perplexity import perplexity, read_text

    requests = parse_specs(steer, relative)
    read_text(file)  # a missing file fails before the model loads
    loaded = _load_checked(model, device, dtype, requests, force)
    base = perplexity(loaded, file, window=window, stride=stride)
    console.print(
        f"unsteered: perplexity {base.perplexity:.3f} (mean NLL {base.mean_nll:.4f} nats "
        f"over {base.n_tokens} tokens)",
        highlight=False,
    )
    if not requests:
        return
    console.print(describe_all(requests), style="dim", markup=False, highlight=False)
    steered = perplexity(loaded, file, window=window, stride=stride, steering=requests)
    change = steered.perplexity - base.perplexity
    console.print(
        f"steered:   perplexity {steered.perplexity:.3f} (mean NLL {steered.mean_nll:.4f} nats)",
        highlight=False,
    )
    console.print(
        f"change:    {change:+.3f} ({100 * change / base.perplexity:+.1f} %), "
        f"NLL {steered.mean_nll - base.mean_nll:+.4f} nats/token",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``steer``, ``chat`` and ``perplexity`` to ``app`` (calling it twice is harmless)."""
    registered = {info.name for info in app.registered_commands}
    for name, command in (
        ("steer", steer_command),
        ("chat", chat_command),
        ("perplexity", perplexity_command),
    ):
        if name not in registered:
            app.command(name)(command)

"""``personavec trait ...``: list, inspect and validate trait artifacts.

Each command is a thin layer over :mod:`personavec.traits.library`. Errors are printed as
``error: <message>`` on stderr with exit status 2; ``validate`` exits 1 when a file is invalid.
Trait text is always printed literally (never parsed as Rich markup: rubrics contain brackets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from personavec.errors import PersonavecError
from personavec.traits.library import (
    list_traits,
    load_trait,
    save_trait,
    trait_to_json,
    trait_warnings,
    validate_trait_file,
)
from personavec.traits.schema import TraitSpec

trait_app = typer.Typer(
    name="trait",
    help="Browse, inspect and validate trait artifacts (the shipped library or your own JSON).",
    no_args_is_help=True,
    add_completion=False,
)


def _console() -> Console:
    return Console(highlight=False)


def _fail(error: PersonavecError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(2)


@trait_app.command("list")
def list_command() -> None:
    """List the shipped traits."""
    table = Table(title="Shipped traits", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("pos / neg persona", max_width=15)
    table.add_column("pairs", justify="right", no_wrap=True)
    table.add_column("questions", justify="right", no_wrap=True)
    table.add_column("description", min_width=24, ratio=1)
    try:
        specs = [load_trait(name) for name in list_traits()]
    except PersonavecError as exc:
        raise _fail(exc) from exc
    for spec in specs:
        table.add_row(
            Text(spec.name),
            Text(f"{spec.positive_persona} / {spec.negative_persona}"),
            str(len(spec.instructions)),
            f"{len(spec.extraction_questions)} / {len(spec.evaluation_questions)}",
            Text(spec.description),
        )
    _console().print(table)
    typer.echo(
        "Use `personavec trait show NAME` for details; any command taking a trait "
        "also accepts a path to your own JSON file."
    )


def _numbered(items: list[str]) -> Text:
    text = Text()
    for index, item in enumerate(items, start=1):
        if index > 1:
            text.append("\n")
        text.append(f"{index:>2}. ", style="dim")
        text.append(item)
    return text


def _render(spec: TraitSpec, console: Console) -> None:
    console.print(Text.assemble((spec.name, "bold"), "  ", (spec.description, "")))
    console.print()
    console.print(
        Text.assemble(
            ("eliciting prompt:   ", "green"),
            spec.system_prompt("pos", 0),
            "\n",
            ("suppressing prompt: ", "red"),
            spec.system_prompt("neg", 0),
        )
    )
    pairs = Table(
        title=f"Instruction pairs ({len(spec.instructions)})",
        show_lines=True,
        title_justify="left",
        expand=True,
    )
    pairs.add_column("#", justify="right", style="dim", no_wrap=True)
    pairs.add_column(f"pos ({spec.positive_persona})", style="green", ratio=1)
    pairs.add_column(f"neg ({spec.negative_persona})", style="red", ratio=1)
    for index, pair in enumerate(spec.instructions):
        pairs.add_row(str(index), Text(pair.pos), Text(pair.neg))
    console.print(pairs)
    sections = [
        (f"Extraction questions ({len(spec.extraction_questions)})", spec.extraction_questions),
        (f"Evaluation questions ({len(spec.evaluation_questions)})", spec.evaluation_questions),
        (f"Positive examples ({len(spec.positive_examples)})", spec.positive_examples),
        (f"Negative examples ({len(spec.negative_examples)})", spec.negative_examples),
    ]
    for title, items in sections:
        console.print(Panel(_numbered(items), title=title, title_align="left"))
    console.print(Panel(Text(spec.rubric), title="Judge rubric", title_align="left"))


@trait_app.command("show")
def show_command(
    name_or_path: str = typer.Argument(..., help="A shipped trait name or a trait JSON file."),
    as_json: bool = typer.Option(False, "--json", help="Print the trait as JSON."),
) -> None:
    """Show one trait: personas, instructions, questions, examples and rubric."""
    try:
        spec = load_trait(name_or_path)
    except PersonavecError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(trait_to_json(spec), nl=False)
        return
    _render(spec, _console())


@trait_app.command("validate")
def validate_command(
    paths: list[Path] = typer.Argument(..., help="Trait JSON files to check."),
    strict: bool = typer.Option(
        False, "--strict", help="Also fail on warnings (e.g. fewer than 5 pairs or 20 questions)."
    ),
) -> None:
    """Check trait JSON files against the schema; exit 1 if any is invalid."""
    failed = False
    for path in paths:
        try:
            spec = validate_trait_file(path)
        except PersonavecError as exc:
            failed = True
            typer.echo(f"FAIL {exc}")
            continue
        warnings = trait_warnings(spec)
        summary = (
            f"{spec.name}: {len(spec.instructions)} pairs, {len(spec.extraction_questions)}"
            f"+{len(spec.evaluation_questions)} questions"
        )
        if warnings and strict:
            failed = True
            typer.echo(f"FAIL {path} ({summary}): {'; '.join(warnings)}")
            continue
        typer.echo(f"OK   {path} ({summary})")
        for warning in warnings:
            typer.echo(f"     warning: {warning}")
    if failed:
        raise typer.Exit(1)


@trait_app.command("new")
def new_command(
    name: Annotated[str, typer.Argument(help="Trait slug, e.g. 'stoic'.")],
    description: Annotated[str, typer.Option(help="One or two sentences describing the trait.")],
    generator: Annotated[
        str, typer.Option(help="openai:MODEL (any OpenAI-compatible endpoint) or anthropic:MODEL.")
    ] = "openai:gpt-4.1-mini",
    out: Annotated[Path | None, typer.Option(help="Where to write (default NAME.json).")] = None,
    base_url: Annotated[str | None, typer.Option(help="Endpoint (or OPENAI_BASE_URL).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Key (or OPENAI_API_KEY).")] = None,
    max_attempts: Annotated[int, typer.Option(help="Replies to try, repairs included.")] = 3,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Ask an LLM for a complete trait artifact, validate (and repair) it, and save it."""
    from personavec.traits.generate import generate_trait

    target = out or Path(f"{name}.json")
    if target.exists() and not force:
        raise _fail(PersonavecError(f"{target} exists; pass --force or choose --out"))
    console = _console()

    def report(attempt: int, problems: str | None) -> None:
        status = "valid" if problems is None else f"invalid, asking for a repair ({problems})"
        console.print(f"attempt {attempt}: {status}", markup=False)

    try:
        spec = generate_trait(
            name,
            description,
            generator,
            base_url=base_url,
            api_key=api_key,
            max_attempts=max_attempts,
            on_attempt=report,
        )
        path = save_trait(spec, target)
    except PersonavecError as error:
        raise _fail(error) from None
    console.print(
        f"wrote {path}: {len(spec.instructions)} instruction pairs, "
        f"{len(spec.extraction_questions)}+{len(spec.evaluation_questions)} questions"
    )

"""Shared pieces of the command line: consoles, common options, one-line error handling.

Command modules (``cli/*.py``) import from here, never from :mod:`personavec.cli.app`, so the
CLI has no import cycle (``python -m personavec`` and ``python -m personavec.cli`` both work).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from personavec.errors import PersonavecError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ModelOption = Annotated[
    str,
    typer.Option("--model", "-m", help="'smollm2' (default), a .gguf file, a directory or hub id."),
]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]


def friendly_errors(func: F) -> F:
    """Turn PersonavecError (and a few plain input errors) into one line and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (PersonavecError, ValueError, FileNotFoundError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err_console.print(
                f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True
            )
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; finished work is kept")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def parse_layers(text: str) -> list[int]:
    """``"12"``, ``"8,12,16"`` or ``"8-16"`` → layer list."""
    layers: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                start, end = part.split("-", 1)
                layers.extend(range(int(start), int(end) + 1))
            elif part:
                layers.append(int(part))
    except ValueError:
        raise PersonavecError(
            f"cannot read layers {text!r}; write e.g. 12, 8,12,16 or 8-16"
        ) from None
    if not layers:
        raise PersonavecError("no layers given; write e.g. --layer 12")
    return layers


def first_error(exc: Exception) -> str:
    """The first problem of a pydantic validation error (or any error) on one line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}"
    return str(exc).splitlines()[0]

"""Shared pieces of the command line: consoles, common options, one-line error handling.

User and metadata text (prompts, answers, trait names) is printed with :func:`escape` or
``markup=False``, so a ``[/]`` inside it cannot break the output.

Command modules (``cli/*.py``) import from here, never from :mod:`personavec.cli.app`, so the
CLI has no import cycle (``python -m personavec`` and ``python -m personavec.cli`` both work).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from personavec.errors import PersonavecError

if TYPE_CHECKING:
    from personavec.core.setting import SteeringSetting

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ModelOption = Annotated[
    str,
    typer.Option("--model", "-m", help="'smollm2' (default), a .gguf file, a directory or hub id."),
]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]
EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        help="Generation engine: hf (transformers, the reference) or vllm (`make install-vllm`).",
    ),
]
JudgeTimeoutOption = Annotated[
    float | None,
    typer.Option(help="Seconds to wait for each LLM-judge answer (PERSONAVEC_JUDGE_TIMEOUT; 120)."),
]
JudgeConcurrencyOption = Annotated[
    int, typer.Option(min=1, help="LLM-judge requests in flight at once.")
]
EstimatorOption = Annotated[
    str | None,
    typer.Option(
        "--estimator",
        envvar="PERSONAVEC_ESTIMATOR",
        help="Which stored estimator every vector file is read as: mean-diff (the file's "
        "default), pca or probe. Give it before the command: personavec --estimator pca steer ...",
    ),
]


def use_estimator(name: str | None, context: typer.Context | None = None) -> None:
    """Make every :meth:`PersonaVector.load` of this command read ``name``'s vectors (through
    ``$PERSONAVEC_ESTIMATOR``, so worker processes follow); ``None``: the files as stored.
    With ``context``, the variable is restored when that command closes (so an in-process run,
    e.g. a test's CliRunner, does not leak the choice into the next one)."""
    import os

    from personavec.core.estimators import ENV_VAR, check_estimator

    before = os.environ.get(ENV_VAR)
    if name is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = check_estimator(name)

    def restore() -> None:  # the choice lasts one command, also when it runs in-process
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before

    if context is not None:
        context.call_on_close(restore)


def friendly_errors(func: F) -> F:
    """Turn PersonavecError (and a few plain input errors) into one line and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (PersonavecError, ValueError, FileNotFoundError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err_console.print(
                f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; finished work is kept")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def first_error(exc: Exception) -> str:
    """The first problem of a pydantic validation error (or any error) on one line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}"
    return str(exc).splitlines()[0]


def print_answers(
    prompts: list[str], answers: list[str], plain: list[str] | None, label: str
) -> None:
    """Each prompt with its answer (and the unsteered one); user text is never markup."""
    for index, prompt in enumerate(prompts):
        console.print(f"[bold cyan]user:[/] {escape(prompt)}", highlight=False)
        if plain is not None:
            console.print("[bold]unsteered:[/]", end=" ")
            console.print(plain[index], highlight=False, markup=False)
        console.print(f"[bold green]{label}:[/] ", end="")
        console.print(answers[index], highlight=False, markup=False)


def merge_config_file(
    ctx: typer.Context, path: Path | None, values: dict[str, Any], *, paths: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``values`` (a command's options) with those a JSON file sets, where the command line
    left the default. Keys are option names (``max_new_tokens`` or ``max-new-tokens``); a list
    becomes a comma-separated string; names in ``paths`` become :class:`Path` s. Unknown keys
    and unreadable files are one-line errors."""
    if path is None:
        return values
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonavecError(f"cannot read --config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PersonavecError(f"--config {path} must hold a JSON object of option names")
    merged = dict(values)
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in values:
            known = ", ".join(sorted(values))
            raise PersonavecError(f"--config {path}: unknown option {key!r}; use one of {known}")
        source = ctx.get_parameter_source(name)  # typer's own click: compare by name
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            continue  # the command line wins
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        merged[name] = Path(value) if name in paths and value is not None else value
    return merged


def setting_from_options(
    vector: Path,
    *,
    layer: str | None = None,
    coef: float | None = None,
    relative: bool | None = None,
    positions: str | None = None,
    op: str = "add",
    mode: str = "stack",
    threshold: str | None = None,
) -> SteeringSetting:
    """The steering setting named by a command's ``--vector/--layer/--coef/--relative/--raw/
    --positions/--op/--mode/--threshold`` options; omitted parts come from the file exactly as
    in :meth:`~personavec.core.setting.SteeringSetting.from_vector` (a unit without ``--coef``
    converts the file's coefficient). Checked before any model loads."""
    from personavec.core.grammar import parse_layers
    from personavec.core.setting import SteeringSetting, unit_of
    from personavec.core.vector import PersonaVector

    return SteeringSetting.from_vector(
        PersonaVector.load(vector),
        layers=parse_layers(layer) if layer else None,
        coef=coef,
        unit=unit_of(relative),
        positions=positions,
        op=op,
        mode=mode,
        threshold=threshold,
    )

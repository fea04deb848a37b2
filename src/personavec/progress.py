"""Progress for long stages: a Rich bar on a terminal, plain lines everywhere else.

When stderr is a terminal (or a notebook), :func:`stage` shows a Rich progress bar. When it is
not (a log file, a pipe, CI), a bar would only appear once, finished; instead the stage prints a
plain line when it starts, then at most every ``interval_s`` seconds while work finishes, and
once at the end::

    judging trait: 96/320 (30%), 3.2/s, eta 70s
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int], None]
"""``advance(done)``: report the absolute number of finished units."""

DEFAULT_INTERVAL_S = 10.0
"""Seconds between two plain progress lines when stderr is not a terminal."""


def _is_interactive(stream: TextIO) -> bool:
    console = Console(file=stream)
    return console.is_terminal or console.is_jupyter


@contextmanager
def stage(
    description: str,
    total: int,
    *,
    enabled: bool = True,
    start: int = 0,
    interval_s: float = DEFAULT_INTERVAL_S,
    stream: TextIO | None = None,
) -> Iterator[Advance]:
    """Progress for one stage of ``total`` units; yields ``advance(done)`` (absolute count).

    Args:
        description: The stage's label, e.g. ``"judging trait"``.
        total: Units in the stage (nothing is shown when it is 0 or less).
        enabled: ``False`` shows nothing.
        start: Units already done before the stage began (a resumed run); they count towards
            ``done`` but not towards the rate.
        interval_s: Least seconds between two plain lines (non-terminal output only).
        stream: Where to write; default ``sys.stderr`` (looked up at call time).
    """
    if not enabled or total <= 0:
        yield lambda done: None
        return
    out = stream if stream is not None else sys.stderr
    if _is_interactive(out):
        with _rich_bar(description, total, start, out) as advance:
            yield advance
    else:
        with _plain_lines(description, total, start, interval_s, out) as advance:
            yield advance


@contextmanager
def _rich_bar(description: str, total: int, start: int, out: TextIO) -> Iterator[Advance]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=out), transient=False) as bar:
        task = bar.add_task(description, total=total, completed=start)
        yield lambda done: bar.update(task, completed=done)


def progress_line(label: str, done: int, total: int, rate: float | None) -> str:
    """``label: done/total (pct%), rate/s, eta Ns`` (rate and eta omitted when unknown)."""
    text = f"{label}: {done}/{total} ({100 * done / total:.0f}%)"
    if rate is not None and rate > 0:
        text += f", {rate:.3g}/s"
        if done < total:
            text += f", eta {max(0, total - done) / rate:.0f}s"
    return text


@contextmanager
def _plain_lines(
    label: str, total: int, start: int, interval_s: float, out: TextIO
) -> Iterator[Advance]:
    began = last = time.monotonic()
    state = {"done": start, "printed": -1}

    def emit(done: int) -> None:
        elapsed = time.monotonic() - began
        rate = (done - start) / elapsed if elapsed > 0 and done > start else None
        print(progress_line(label, done, total, rate), file=out, flush=True)
        state["printed"] = done

    def advance(done: int) -> None:
        nonlocal last
        state["done"] = done
        now = time.monotonic()
        if now - last >= interval_s and done != state["printed"]:
            last = now
            emit(done)

    emit(start)
    try:
        yield advance
    finally:  # also when the stage fails: the log shows how far it got
        if state["printed"] != state["done"]:
            emit(state["done"])

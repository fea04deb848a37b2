"""Rows that survive interruption: read what a JSONL file holds, produce only what is missing.

:func:`resumable_rows` produces a chunk of units at a time and appends each chunk as soon as it
is done, so a killed run keeps every finished chunk, with progress counted in rows. A file shared
by several kinds of row (``evaluate``'s ``answers.jsonl`` holds every cell's answers) selects its
rows with ``belongs`` and keys them with ``key_of``, e.g.
``belongs=lambda r: r["cell_key"] == key, key_of=lambda r: (r["question_index"], r["sample"])``.
Keys of rows that depend on settings are hashes of those settings (:func:`record_key`), never a
display name, so rows computed under other settings are never reused.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from personavec.progress import stage
from personavec.runs.identity import content_sha256
from personavec.store import append_jsonl, read_jsonl

Unit = TypeVar("Unit")
Row = dict[str, Any]


def record_key(settings: Any) -> str:
    """The key of a record produced under ``settings`` (a JSON-able value): its content hash."""
    return content_sha256(settings)


def _row_id(row: Row) -> Hashable:
    return row["id"]


def resumable_rows(
    path: Path,
    units: Sequence[Unit],
    *,
    row_keys: Callable[[Unit], Sequence[Hashable]],
    produce: Callable[[list[Unit]], list[Row]],
    chunk_size: int,
    label: str,
    show_progress: bool = True,
    key_of: Callable[[Row], Hashable] = _row_id,
    belongs: Callable[[Row], bool] | None = None,
) -> list[Row]:
    """Every unit's rows, in unit order: read from ``path``, producing only what is missing.

    Args:
        path: The JSONL file of rows (created when missing; appended to after each chunk).
        units: Units of work, e.g. one prompt each; a unit yields one row per key.
        row_keys: The keys of the rows a unit yields (e.g. one per sample).
        produce: Rows for a chunk of units (each row's key given by ``key_of``); rows whose key
            is already in the file, or not wanted, are dropped.
        chunk_size: Units per ``produce`` call (one append per call).
        label, show_progress: The progress stage, counted in rows.
        key_of: A row's key (default its ``"id"``).
        belongs: Only rows of ``path`` for which this is true are reused (e.g. a cell's key when
            several kinds of row share one file).

    Raises:
        RuntimeError: ``produce`` did not return a wanted row.
    """
    existing = {key_of(row): row for row in read_jsonl(path) if belongs is None or belongs(row)}
    wanted = [key for unit in units for key in row_keys(unit)]
    missing = [u for u in units if any(k not in existing for k in row_keys(u))]
    done = len(wanted) - sum(len(row_keys(u)) for u in missing)
    step = max(1, chunk_size)
    with stage(label, len(wanted), enabled=show_progress, start=done) as advance:
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            keys = {k for unit in chunk for k in row_keys(unit)}
            rows = [r for r in produce(chunk) if key_of(r) in keys and key_of(r) not in existing]
            append_jsonl(path, rows)
            existing.update({key_of(row): row for row in rows})
            done += sum(len(row_keys(u)) for u in chunk)
            advance(done)
    absent = [key for key in wanted if key not in existing]
    if absent:
        raise RuntimeError(f"{label}: no row was produced for {absent[0]!r}")
    return [existing[key] for key in wanted]

"""Streaming readers of chat data for screening: one :class:`Sample` at a time, never the whole set.

Sources (chosen by :func:`open_source`):

* ``*.jsonl`` / ``*.json``: one JSON object per line, parsed by
  :func:`personavec.runs.chat_rows.parse_chat_row` in its ``response`` mode (the parser
  ``finetune`` uses too): ``{"messages": [...]}`` (the last turn, an assistant turn, is the
  response) or ``{"prompt"|"question": ..., "response": ..., "system"?}``;
* ``*.parquet``: the same fields as columns (``messages`` as a list of structs or a JSON string);
* a directory written by ``datasets.Dataset.save_to_disk`` (read with ``datasets``).

Every row gets ``index`` (its 0-based position among the source's data rows, bad rows included)
and ``id`` (the row's ``id`` field when present, else ``str(index)``). A row that cannot be
screened — invalid JSON, no response, no user turn — is a :class:`BadRow` with its line number;
the caller decides whether that aborts the run or is skipped and reported.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personavec.core.capture import Example
from personavec.errors import PersonavecError
from personavec.runs.chat_rows import parse_chat_row


class ScreenDataError(PersonavecError):
    """The data to screen is missing, unreadable or has invalid rows."""


@dataclass(frozen=True)
class Sample:
    """One screenable row.

    Attributes:
        index: 0-based position among the source's rows (bad rows count).
        id: the row's ``id`` field, else ``str(index)``.
        example: prompt messages and the dataset's response.
        own_response: the model's own response read from a user-named column, if any.
    """

    index: int
    id: str
    example: Example
    own_response: str | None = None


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be screened: where it is (``file:line``) and why."""

    index: int
    where: str
    reason: str


def _row_to_sample(row: Any, index: int, where: str, own_column: str | None) -> Sample | BadRow:
    try:
        parsed = parse_chat_row(row, where, "response")
    except PersonavecError as exc:
        return BadRow(index, where, str(exc).removeprefix(f"{where}: "))
    own: str | None = None
    if own_column is not None:
        value = row.get(own_column)
        if not isinstance(value, str) or not value.strip():
            return BadRow(index, where, f"column {own_column!r} holds no response text")
        own = value
    raw_id = row.get("id")
    identity = str(raw_id) if raw_id is not None else str(index)
    example = Example(parsed.prompt, parsed.response, parsed.response_ids)
    return Sample(index, identity, example, own)


def _jsonl_rows(path: Path) -> Iterator[tuple[Any, str, str | None]]:
    """``(row or None, file:line, JSON error)`` for each non-blank line."""
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    yield json.loads(line), where, None
                except json.JSONDecodeError as exc:
                    yield None, where, f"invalid JSON ({exc.msg})"
    except UnicodeDecodeError as exc:
        message = f"cannot read {path}: {exc.reason}; pass a UTF-8 JSONL file"
        raise ScreenDataError(message) from None


def _normalise_parquet_row(row: dict[str, Any]) -> dict[str, Any]:
    messages = row.get("messages")
    if isinstance(messages, str):
        with contextlib.suppress(json.JSONDecodeError):  # else the parser reports "not a list"
            row["messages"] = json.loads(messages)
    return {k: v for k, v in row.items() if v is not None}


def _parquet_rows(path: Path, batch_rows: int = 256) -> Iterator[tuple[Any, str, str | None]]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        message = f"cannot read {path} as Parquet ({exc}); pass a Parquet file"
        raise ScreenDataError(message) from None
    number = 0
    for batch in reader.iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            number += 1
            yield _normalise_parquet_row(row), f"{path}:row {number}", None


def _datasets_rows(path: Path) -> Iterator[tuple[Any, str, str | None]]:
    try:
        import datasets
    except ImportError:
        raise ScreenDataError("reading a saved dataset needs `pip install datasets`") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ...
        raise ScreenDataError(f"cannot load the dataset at {path} ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            splits = ", ".join(loaded)
            raise ScreenDataError(f"{path} has splits {splits}; point at one split's directory")
        loaded = loaded["train"]
    for number, row in enumerate(loaded, start=1):  # memory-mapped: rows are read lazily
        yield _normalise_parquet_row(dict(row)), f"{path}:row {number}", None


def source_kind(path: str | Path) -> str:
    """``jsonl``, ``parquet`` or ``datasets`` for a data path; raise if it is none of them."""
    source = Path(path)
    if source.is_dir():
        if (source / "dataset_info.json").is_file() or (source / "dataset_dict.json").is_file():
            return "datasets"
        raise ScreenDataError(f"{source} is a directory but not a saved `datasets` dataset")
    if not source.is_file():
        raise ScreenDataError(f"data file not found: {source}; check the path")
    if source.suffix == ".parquet":
        return "parquet"
    if source.suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise ScreenDataError(f"{source}: unknown data format; pass .jsonl, .parquet or a dataset dir")


def iter_rows(path: str | Path) -> Iterator[tuple[Any, str, str | None]]:
    """Raw rows of any supported source: ``(row, where, error)``; ``row`` is None on error."""
    source = Path(path)
    kind = source_kind(source)
    if kind == "jsonl":
        return _jsonl_rows(source)
    if kind == "parquet":
        return _parquet_rows(source)
    return _datasets_rows(source)


def iter_samples(
    path: str | Path, *, own_column: str | None = None, start: int = 0
) -> Iterator[Sample | BadRow]:
    """Samples (and bad rows) of a source in order, from row ``start`` on; streaming."""
    for index, (row, where, error) in enumerate(iter_rows(path)):
        if index < start:
            continue
        if error is not None:
            yield BadRow(index, where, error)
        else:
            yield _row_to_sample(row, index, where, own_column)


@dataclass(frozen=True)
class DataScan:
    """What a validation pass over a source found: row count and the bad rows (capped)."""

    n_rows: int
    n_bad: int
    bad: list[BadRow]


def scan(path: str | Path, *, own_column: str | None = None, keep_bad: int = 1000) -> DataScan:
    """Validate every row once (streaming; keeps at most ``keep_bad`` bad rows in memory)."""
    n_rows = 0
    n_bad = 0
    bad: list[BadRow] = []
    for item in iter_samples(path, own_column=own_column):
        n_rows += 1
        if isinstance(item, BadRow):
            n_bad += 1
            if len(bad) < keep_bad:
                bad.append(item)
    if n_rows == 0:
        raise ScreenDataError(f"{path} has no rows; give one chat sample per row")
    return DataScan(n_rows, n_bad, bad)


def raw_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as plain JSON-serialisable data (for writing kept rows of non-JSONL sources)."""
    return json.loads(json.dumps(dict(row), default=str))

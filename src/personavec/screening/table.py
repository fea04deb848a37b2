"""The scores table of a screening run: appended as JSON lines per batch, finished as Parquet.

``scores.jsonl`` holds one line per input row in input order (``index`` increasing): ``index``,
``id``, ``skipped`` (the reason a bad row was not scored, else null), the score columns and, in
full mode, ``own_response``. Rows are appended in order and fsynced per batch
(``store.append_jsonl``, which also cuts off a line truncated by a kill), so the finished rows
always form a prefix of the input and a resumed run starts after the last finished ``index``.
Everything here streams: memory does not grow with the table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personavec.store import atomic_output

SCORES_JSONL = "scores.jsonl"
SCORES_PARQUET = "scores.parquet"


def iter_scores(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of ``scores.jsonl``; a truncated last line (a killed append) is ignored."""
    source = Path(path)
    if not source.is_file():
        return
    with open(source, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # interrupted append; the next append cuts it off
            if line.strip():
                yield json.loads(line)


def finished_through(path: str | Path) -> int:
    """The last finished input ``index`` in ``scores.jsonl`` (``-1`` when none)."""
    last = -1
    for row in iter_scores(path):
        last = max(last, int(row["index"]))
    return last


def column_values(path: str | Path, column: str) -> np.ndarray:
    """Float64 ``[n]`` values of one score column over scored rows (NaN where null)."""
    values = [
        float("nan") if row.get(column) is None else float(row[column])
        for row in iter_scores(path)
        if row.get("skipped") is None
    ]
    return np.asarray(values, dtype=np.float64)


def _schema(score_columns: Sequence[str], with_own: bool) -> Any:
    import pyarrow as pa

    fields = [("index", pa.int64()), ("id", pa.string()), ("skipped", pa.string())]
    fields += [(name, pa.float64()) for name in score_columns]
    if with_own:
        fields.append(("own_response", pa.string()))
    return pa.schema(fields)


def write_parquet(
    jsonl_path: str | Path,
    parquet_path: str | Path,
    score_columns: Sequence[str],
    *,
    with_own: bool,
    chunk_rows: int = 2048,
) -> Path:
    """Convert ``scores.jsonl`` to Parquet in chunks, atomically; return the Parquet path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(score_columns, with_own)
    names = schema.names
    target = Path(parquet_path)
    with atomic_output(target, "wb") as handle:
        writer = pq.ParquetWriter(handle, schema)
        chunk: list[dict[str, Any]] = []

        def flush() -> None:
            columns = {name: [row.get(name) for row in chunk] for name in names}
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            chunk.clear()

        for row in iter_scores(jsonl_path):
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                flush()
        if chunk:
            flush()
        writer.close()
    return target


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a finished scores table (Parquet or JSONL) — for tests and small tables."""
    source = Path(path)
    if source.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(source).to_pylist())
    return list(iter_scores(source))

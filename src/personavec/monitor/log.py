"""The monitor's SQLite log: readings appended one transaction per batch, and read back.

Table ``readings``: ``session, sequence, token_index, token_id, is_prompt, name, layer, value,
timestamp`` (one row per token per monitored vector; ``value`` in hidden-state units, ``timestamp``
in seconds since the epoch).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from personavec.errors import PersonavecError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    session TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    token_index INTEGER NOT NULL,
    token_id INTEGER NOT NULL,
    is_prompt INTEGER NOT NULL,
    name TEXT NOT NULL,
    layer INTEGER NOT NULL,
    value REAL NOT NULL,
    timestamp REAL NOT NULL
)
"""


class LogRow(NamedTuple):
    """One stored reading (see the module docstring for the columns)."""

    session: str
    sequence: int
    token_index: int
    token_id: int
    is_prompt: bool
    name: str
    layer: int
    value: float
    timestamp: float


class ReadingLog:
    """Readings appended to a SQLite file (table ``readings``), one transaction per batch.

    Args:
        path: the database file (created with its table when missing).
        session: id of this run's rows (default: a fresh random hex id).
    """

    def __init__(self, path: str | Path, *, session: str | None = None) -> None:
        self.path = Path(path)
        self.session = session or uuid.uuid4().hex
        if self.path.parent and not self.path.parent.exists():
            raise PersonavecError(f"log directory {self.path.parent} does not exist; create it")
        try:
            with sqlite3.connect(self.path) as db:
                db.execute(_SCHEMA)
                db.execute(
                    "CREATE INDEX IF NOT EXISTS readings_session ON readings (session, sequence)"
                )
            db.close()
        except sqlite3.DatabaseError as exc:
            raise PersonavecError(
                f"cannot use {self.path} as a log: {exc}; pick another file"
            ) from None

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Append ``(sequence, token_index, token_id, is_prompt, name, layer, value, time)``."""
        if not rows:
            return
        db = sqlite3.connect(self.path)
        try:
            with db:
                db.executemany(
                    "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(self.session, *row) for row in rows],
                )
        finally:
            db.close()


def read_log(path: str | Path, *, session: str | None = None) -> list[LogRow]:
    """Rows of a :class:`ReadingLog` file, ordered by session, sequence, token, name."""
    source = Path(path)
    if not source.is_file():
        raise PersonavecError(f"log file not found: {source}; check the path")
    db = sqlite3.connect(source)
    try:
        query = "SELECT * FROM readings"
        params: tuple[Any, ...] = ()
        if session is not None:
            query += " WHERE session = ?"
            params = (session,)
        query += " ORDER BY session, sequence, token_index, name"
        rows = db.execute(query, params).fetchall()
    except sqlite3.DatabaseError as exc:
        raise PersonavecError(f"cannot read {source} as a monitor log: {exc}") from None
    finally:
        db.close()
    return [
        LogRow(s, int(q), int(t), int(i), bool(p), n, int(layer), float(v), float(ts))
        for s, q, t, i, p, n, layer, v, ts in rows
    ]

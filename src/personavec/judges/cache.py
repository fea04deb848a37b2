"""An on-disk cache of judgments, so a rerun never pays twice for the same verdict.

:class:`JudgmentCache` is one SQLite file in WAL mode with one table keyed by
``(judge identity, aspect, sha256(question), sha256(answer))``. Each row holds the score (REAL,
NULL when the judge could not say) and a ``status`` (``"scored"`` or ``"none"``), so a ``None``
verdict is cached too. :class:`CachedJudge` wraps any judge: it scores only the misses, in
chunks, and writes each chunk in one transaction as soon as it is scored, so an interrupted run
keeps every chunk it finished (and, when a judge raises :class:`IncompleteScores`, the verdicts
of the chunk that did arrive).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from personavec.errors import PersonavecError
from personavec.judges.base import Aspect, IncompleteScores, Judge, JudgeItem

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    judge TEXT NOT NULL,
    aspect TEXT NOT NULL,
    question_sha256 TEXT NOT NULL,
    answer_sha256 TEXT NOT NULL,
    score REAL,
    status TEXT NOT NULL CHECK (status IN ('scored', 'none')),
    created_at REAL NOT NULL,
    PRIMARY KEY (judge, aspect, question_sha256, answer_sha256)
) WITHOUT ROWID
"""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def item_key(item: JudgeItem) -> tuple[str, str]:
    """``(sha256(question), sha256(answer))`` as hex strings."""
    return _sha256(item.question), _sha256(item.answer)


class JudgmentCache:
    """Judgments stored in a SQLite file (created with its directory when missing).

    Safe to share between threads of one process and between processes (WAL, busy timeout).
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise PersonavecError(
                f"cannot open the judgment cache {self.path} ({exc}); delete it or pick "
                "another path"
            ) from exc
        self._lock = threading.Lock()

    def get_many(
        self, judge: str, aspect: Aspect, items: Sequence[JudgeItem]
    ) -> dict[int, float | None]:
        """Cached verdicts by item index; misses are absent, a cached ``None`` is present."""
        found: dict[int, float | None] = {}
        with self._lock:
            for index, item in enumerate(items):
                question, answer = item_key(item)
                row = self._conn.execute(
                    "SELECT score, status FROM judgments WHERE judge=? AND aspect=? "
                    "AND question_sha256=? AND answer_sha256=?",
                    (judge, aspect, question, answer),
                ).fetchone()
                if row is not None:
                    found[index] = None if row[1] == "none" else float(row[0])
        return found

    def put_many(
        self,
        judge: str,
        aspect: Aspect,
        items: Sequence[JudgeItem],
        scores: Sequence[float | None],
    ) -> None:
        """Store verdicts (replacing older ones for the same key) in one transaction."""
        if len(items) != len(scores):
            raise ValueError(f"{len(items)} items but {len(scores)} scores")
        now = time.time()
        rows = [
            (
                judge,
                aspect,
                *item_key(item),
                None if score is None else float(score),
                "none" if score is None else "scored",
                now,
            )
            for item, score in zip(items, scores, strict=True)
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO judgments (judge, aspect, question_sha256, "
                    "answer_sha256, score, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def count(self, judge: str | None = None) -> int:
        """Number of stored judgments (of one judge identity when given)."""
        with self._lock:
            if judge is None:
                row = self._conn.execute("SELECT COUNT(*) FROM judgments").fetchone()
            else:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM judgments WHERE judge=?", (judge,)
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection (further use raises)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JudgmentCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class CachedJudge:
    """A judge that consults a :class:`JudgmentCache` first and scores only the misses.

    Args:
        judge: The judge that does the work.
        cache: Where verdicts are kept.
        chunk_size: Misses are scored and stored this many at a time (one transaction each).
        on_chunk: Called with the number of items just scored (e.g. for a progress bar).
    """

    def __init__(
        self,
        judge: Judge,
        cache: JudgmentCache,
        *,
        chunk_size: int = 64,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise PersonavecError(f"chunk_size must be >= 1, got {chunk_size}")
        self.judge = judge
        self.cache = cache
        self.chunk_size = chunk_size
        self.on_chunk = on_chunk

    @property
    def identity(self) -> str:
        return self.judge.identity

    @property
    def aspect(self) -> Aspect:
        return self.judge.aspect

    def score(self, items: Sequence[JudgeItem]) -> list[float | None]:
        """Scores in input order; cached verdicts are reused, duplicates are scored once."""
        identity, aspect = self.judge.identity, self.judge.aspect
        found = self.cache.get_many(identity, aspect, items)
        pending: dict[JudgeItem, list[int]] = {}
        for index, item in enumerate(items):
            if index not in found:
                pending.setdefault(item, []).append(index)
        unique = list(pending)
        for start in range(0, len(unique), self.chunk_size):
            chunk = unique[start : start + self.chunk_size]
            try:
                scores = self.judge.score(chunk)
            except IncompleteScores as exc:  # keep the verdicts that arrived, then stop
                kept = sorted(exc.scored.items())
                if kept:
                    self.cache.put_many(
                        identity, aspect, [chunk[i] for i, _ in kept], [s for _, s in kept]
                    )
                raise
            if len(scores) != len(chunk):
                raise PersonavecError(
                    f"judge {identity} returned {len(scores)} scores for {len(chunk)} items; "
                    "this is a bug in the judge"
                )
            self.cache.put_many(identity, aspect, chunk, scores)
            for item, score in zip(chunk, scores, strict=True):
                for index in pending[item]:
                    found[index] = score
            if self.on_chunk is not None:
                self.on_chunk(len(chunk))
        return [found[index] for index in range(len(items))]

"""Resumable run directories: one lock, one identity check, one append-per-batch stage.

Every pipeline that keeps its work in a run directory follows the same steps::

    run_dir = prepare_run_dir(path)          # refuses a regular file; creates the directory
    with run_lock(run_dir):                  # refuses a second process on the same directory
        check_run_identity(run_dir, identity, KEYS, overwrite=..., stale=("rows.jsonl",))
        loaded = load_model(...)             # anything that can fail on bad input comes first
        write_run_config(run_dir, identity)  # only now does the directory belong to this run
        rows = resumable_rows(run_dir / "rows.jsonl", units, row_keys=..., produce=..., ...)

* :func:`check_run_identity` compares the settings that define the run's results with the saved
  ``config.json``. Content that a name or path does not pin down (a trait file that can be
  edited, a vector, a ladder) goes into the identity as a hash (:func:`content_sha256`).
* :func:`resumable_rows` reads the rows already in a JSONL file, produces only the missing ones,
  a chunk at a time, and appends each chunk as soon as it is done (an interrupted run keeps every
  finished chunk), with progress counted in rows.

A file shared by several kinds of row (``evaluate``'s ``answers.jsonl`` holds every cell's
answers) selects its rows with ``belongs`` and keys them with ``key_of``, e.g.
``belongs=lambda r: r["cell_key"] == key, key_of=lambda r: (r["question_index"], r["sample"])``.
Judging goes through :func:`personavec.pipeline.judging.judge_items`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from personavec.errors import PersonavecError
from personavec.progress import stage
from personavec.store import append_jsonl, atomic_write_json, read_jsonl

Unit = TypeVar("Unit")
Row = dict[str, Any]
LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"


class RunLockedError(PersonavecError):
    """Another process holds the run directory's lock."""


def content_sha256(content: bytes | Any) -> str:
    """First 16 hex digits of the SHA-256 of ``content`` (bytes, or canonical JSON of a value)."""
    data = content if isinstance(content, bytes) else json.dumps(content, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory ``path`` (and its parents); refuse a path that is not one."""
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        message = f"{run_dir} is a file, not a run directory; pass a directory to --out"
        raise PersonavecError(message)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PersonavecError(
            f"cannot create run directory {run_dir} ({reason}); pass a writable --out"
        ) from None
    return run_dir


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``run_dir`` (``run_dir/.lock``) until the block exits.

    A second process (or a second lock in this one) gets :class:`RunLockedError` at once. The
    lock is the kernel's (``flock``), so it goes away with the process even after a kill; the
    ``.lock`` file stays and holds the last owner's pid. Where ``fcntl`` is missing (Windows)
    no lock is taken.
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield Path(run_dir)
        return
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = _lock_owner(handle)
        handle.close()
        raise RunLockedError(
            f"another personavec process{owner} is using {run_dir}; wait for it to finish, "
            "or pass another --out"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield Path(run_dir)
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def _lock_owner(handle: IO[str]) -> str:
    handle.seek(0)
    pid = handle.read().strip()
    return f" (pid {pid})" if pid.isdigit() else ""


def _describe(key: str) -> str:
    return f"{key.removesuffix('_sha256')} content" if key.endswith("_sha256") else key


def check_run_identity(
    run_dir: Path,
    current: Mapping[str, Any],
    keys: Sequence[str],
    *,
    overwrite: bool,
    stale: Sequence[str],
    recover: Mapping[str, Callable[[Path], Any]] | None = None,
) -> None:
    """Refuse to resume a run directory whose saved ``config.json`` differs in ``keys``.

    Args:
        run_dir: The run directory (no ``config.json`` yet: nothing to check).
        current: This run's settings (the identity keys must be present).
        keys: The settings whose change makes earlier work in ``stale`` invalid.
        overwrite: Start afresh: delete the ``stale`` files whatever the old settings were.
        stale: Files holding work tied to the identity; deleted after an accepted change. Other
            files (judgment caches keyed by content) stay.
        recover: For keys an older run did not record, how to compute the old value from its
            directory (``None`` when it cannot tell, which counts as a change).

    A change is refused only when one of the ``stale`` files exists, i.e. when there is earlier
    work that would otherwise be reused; a directory left by a run that failed before doing
    anything is simply taken over.
    """
    saved_path = run_dir / CONFIG_NAME
    if saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = None
        if not isinstance(saved, dict):
            raise PersonavecError(
                f"{saved_path} is not a JSON object; remove it or pass --overwrite"
            )
        changed = [k for k in keys if _saved_value(saved, k, run_dir, recover) != current.get(k)]
    else:
        changed = []
    existing = [name for name in stale if (run_dir / name).exists()]
    if changed and existing and not overwrite:
        raise PersonavecError(
            f"{run_dir} holds a run with different {', '.join(map(_describe, changed))}; "
            "pass another --out, or --overwrite to start it afresh"
        )
    if changed or overwrite:
        for name in existing:
            (run_dir / name).unlink(missing_ok=True)


def _saved_value(
    saved: Mapping[str, Any],
    key: str,
    run_dir: Path,
    recover: Mapping[str, Callable[[Path], Any]] | None,
) -> Any:
    if key in saved or recover is None or key not in recover:
        return saved.get(key)
    return recover[key](run_dir)


def write_run_config(run_dir: Path, config: Mapping[str, Any]) -> Path:
    """Save the run's settings as ``config.json`` (atomically).

    Call it once the run is sure to start (after the model loaded), so that a run that failed
    on bad input does not claim the directory.
    """
    return atomic_write_json(run_dir / CONFIG_NAME, dict(config))


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

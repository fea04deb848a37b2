"""The run directory's lock: one process at a time per directory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from personavec.errors import PersonavecError

LOCK_NAME = ".lock"


class RunLockedError(PersonavecError):
    """Another process holds the run directory's lock."""


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

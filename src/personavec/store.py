"""Atomic file writes: a temp file in the same directory, fsync, then rename.

A reader never sees a half-written file, and an interrupted write leaves the old file intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from personavec.errors import PersonavecError


def _create_temp(target: Path) -> tuple[int, str]:
    """Open a new temp file beside ``target`` with the permissions of a normal new file.

    ``tempfile.mkstemp`` creates files readable by the owner only (0600); ``os.open`` with
    0666 lets the umask decide, as ``open(path, "w")`` does, so every run file gets the same
    mode.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise PersonavecError(f"cannot create a temporary file beside {target}; clean that directory")


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file handle (text ``"w"`` or binary ``"wb"``) whose content appears at ``path`` only
    when the block finishes; parent directories are created. A new file gets the mode
    ``0666 & ~umask``, like any file the user's programs create."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`); return the path."""
    with atomic_output(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write pretty JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as JSON lines and fsync, so finished work survives a crash.

    A crash can at worst leave one truncated last line, which :func:`read_jsonl` skips and the
    next append cuts off before writing, so it never ends up in the middle of the file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _drop_truncated_tail(target)
    with open(target, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Replace ``path`` with ``rows`` as JSON lines, atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a truncated final line (from a crash) is ignored."""
    target = Path(path)
    if not target.is_file():
        return []
    rows: list[dict[str, Any]] = []
    lines = target.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # interrupted write
            message = f"{target}:{number} is not valid JSON; delete or repair that line"
            raise ValueError(message) from None
    return rows


def _drop_truncated_tail(path: Path) -> None:
    """Cut a final line without its newline (an interrupted append) off ``path``."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        content = handle.read()
        handle.truncate(content.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())


def check_output_file(
    path: str | Path,
    *,
    overwrite: bool = False,
    flag: str = "--out",
    replaceable: Callable[[Path], bool] | None = None,
) -> Path:
    """``path`` as a file a command may write, checked before any work starts: not a directory,
    no parent that is a file, and not an existing file unless ``overwrite`` (or
    ``replaceable(path)`` says it is this command's own earlier output). One-line
    :class:`PersonavecError` otherwise."""
    target = Path(path)
    if target.is_dir():
        raise PersonavecError(f"{flag} {target} is a directory; pass a file path")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise PersonavecError(f"{parent} is a file, so {target} cannot be created; fix {flag}")
    if target.exists() and not overwrite and not (replaceable and replaceable(target)):
        raise PersonavecError(f"{target} exists; pass --overwrite to replace it, or another {flag}")
    return target

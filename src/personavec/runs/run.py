"""The run primitive: open a run directory = lock it, compare its full identity, then resume,
refuse or start afresh.

Every command that keeps its work in a directory opens it the same way::

    identity = {**settings, "trait_sha256": ..., "vector_sha256": [...], "dataset_sha256": ...}
    with open_run(out, identity, outputs=("rows.jsonl", "report.md"), overwrite=overwrite) as run:
        loaded = load_model(...)                       # bad input fails before anything is written
        run.start(weights_sha256=weights_sha256(loaded.model))   # identity known only now
        rows = resumable_rows(run.dir / "rows.jsonl", ...)

* **Identity** is every setting that changes a result plus a content hash of every input
  (:mod:`personavec.runs.identity`). All of it is compared, not a chosen subset: the same →
  resume; different → refuse in one line naming what changed, unless ``overwrite``, which
  deletes the run's ``outputs`` and starts afresh. A directory whose outputs do not exist yet
  (a run that failed before doing any work) is simply taken over.
* Parts of the identity known only after loading (the model's weights) are passed to
  :meth:`Run.start`, compared the same way, and only then is ``config.json`` written: a run that
  failed on bad input does not claim the directory, and a directory this call created is removed
  again when nothing but the lock was written.
* An older ``config.json`` that lacks a key is resumed when ``recover`` can compute the old value
  from the directory, else refused with a message that says to pass ``--overwrite``.
* ``config.json`` is flat: the identity keys, ``identity_keys`` (their names) and any ``info``
  (recorded, never compared, e.g. the paths the vectors were read from).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personavec.errors import PersonavecError
from personavec.runs.lock import LOCK_NAME, run_lock
from personavec.store import atomic_write_json

CONFIG_NAME = "config.json"
IDENTITY_KEYS = "identity_keys"
Recover = Mapping[str, Callable[[Path], Any]]
_UNRECORDED = object()  # an older run that did not record the key
_ABSENT = object()  # a run of this version without that setting


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory ``path`` (and its parents); refuse a path that is not one."""
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise PersonavecError(
            f"{run_dir} is a file, not a run directory; pass a directory to --out"
        )
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise PersonavecError(f"{parent} is a file, so {run_dir} cannot be created; fix --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PersonavecError(
            f"cannot create run directory {run_dir} ({reason}); pass a writable --out"
        ) from None
    return run_dir


def _normalised(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The identity as it reads back from JSON (tuples become lists, keys strings)."""
    return dict(json.loads(json.dumps(dict(identity), sort_keys=True, default=str)))


def _describe(key: str) -> str:
    return f"{key.removesuffix('_sha256')} content" if key.endswith("_sha256") else key


@dataclass
class Run:
    """An open, locked run directory (see the module docstring). Made by :func:`open_run`.

    Attributes:
        dir: The run directory.
        identity: The full identity compared so far (JSON-normalised).
        outputs: Names (or glob patterns) under ``dir`` holding work tied to the identity.
        resumed: True when earlier work under the same identity is being reused.
    """

    dir: Path
    identity: dict[str, Any]
    outputs: tuple[str, ...]
    overwrite: bool
    saved: dict[str, Any] | None
    recover: Recover = field(default_factory=dict)
    resumed: bool = False

    def path(self, name: str) -> Path:
        """``dir / name``."""
        return self.dir / name

    def existing_outputs(self) -> list[Path]:
        """The outputs present in the directory now."""
        found: list[Path] = []
        for pattern in self.outputs:
            found.extend(sorted(self.dir.glob(pattern)))
        return [path for path in found if path.name not in (LOCK_NAME, CONFIG_NAME)]

    def start(self, info: Mapping[str, Any] | None = None, **late: Any) -> None:
        """Compare the ``late`` identity keys (e.g. ``weights_sha256``), then write
        ``config.json`` (identity + ``info``); call it once everything that can fail on bad
        input has been checked and loaded."""
        self._settle(_normalised(late))
        config = {**(info or {}), **self.identity, IDENTITY_KEYS: sorted(self.identity)}
        atomic_write_json(self.dir / CONFIG_NAME, config)

    def _settle(self, identity: Mapping[str, Any]) -> None:
        """Add ``identity`` keys; refuse or clear when they differ from the saved run."""
        self.identity.update(identity)
        changed = (
            []
            if self.saved is None
            else [key for key in identity if self._saved_value(key) != identity[key]]
        )
        existing = self.existing_outputs()
        if changed and existing and not self.overwrite:
            unrecorded = [key for key in changed if self._saved_value(key) is _UNRECORDED]
            if unrecorded:
                raise PersonavecError(
                    f"{self.dir} was written by an older personavec that did not record "
                    f"{', '.join(map(_describe, unrecorded))}; pass --overwrite to start it afresh"
                )
            names = ", ".join(_describe(key) for key in changed)
            raise PersonavecError(
                f"{self.dir} holds a run with different {names}; "
                "pass another --out, or --overwrite to start it afresh"
            )
        if (changed or self.overwrite) and existing:
            _remove(existing)
        self.resumed = bool(existing) and not changed and not self.overwrite

    def _saved_value(self, key: str) -> Any:
        assert self.saved is not None
        if key in self.saved:
            return self.saved[key]
        if key in self.recover:
            return _normalised({key: self.recover[key](self.dir)})[key]
        # A run of this version lists its keys: a key it lacks is a change like any other.
        return _ABSENT if IDENTITY_KEYS in self.saved else _UNRECORDED


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _read_saved(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        raise PersonavecError(f"{path} is not a JSON object; remove it or pass --overwrite")
    return saved


@contextlib.contextmanager
def open_run(
    path: str | Path,
    identity: Mapping[str, Any],
    *,
    outputs: Sequence[str],
    overwrite: bool = False,
    recover: Recover | None = None,
) -> Iterator[Run]:
    """Open the run directory ``path`` for a run with ``identity`` (see the module docstring).

    Args:
        path: The run directory (created with its parents when missing).
        identity: Every setting that changes the run's results and the content hash of every
            input known before loading; keys known only later go to :meth:`Run.start`.
        outputs: Names or glob patterns (relative to the directory) of the files and
            directories that hold work tied to the identity; ``overwrite`` or an accepted
            change deletes exactly these. Caches keyed by content (judgments) are not outputs.
        overwrite: Start afresh whatever the saved identity says.
        recover: For keys an older run did not record, how to compute the old value from its
            directory (``None``: it cannot tell, which counts as a change).

    Raises:
        PersonavecError: The path is not a directory, another process holds it, or it holds a
            run with another identity (without ``overwrite``).
    """
    with locked_run_dir(path) as run_dir:
        yield claim_run(run_dir, identity, outputs=outputs, overwrite=overwrite, recover=recover)


def claim_run(
    run_dir: Path,
    identity: Mapping[str, Any],
    *,
    outputs: Sequence[str],
    overwrite: bool = False,
    recover: Recover | None = None,
) -> Run:
    """The identity step of :func:`open_run` for a directory the caller has already locked
    (:func:`locked_run_dir`); same arguments and errors."""
    run = Run(
        dir=run_dir,
        identity={},
        outputs=tuple(outputs),
        overwrite=overwrite,
        saved=_read_saved(run_dir),
        recover=recover or {},
    )
    run._settle(_normalised(identity))
    return run


@contextlib.contextmanager
def locked_run_dir(path: str | Path) -> Iterator[Path]:
    """:func:`prepare_run_dir` + :func:`~personavec.runs.lock.run_lock`; a directory this call
    created is removed again when the block fails before anything but the lock was written
    (bad input leaves nothing). :func:`open_run` adds the identity on top."""
    existed = Path(path).exists()
    run_dir = prepare_run_dir(path)
    try:
        with run_lock(run_dir):
            yield run_dir
    except BaseException:
        if not existed and {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            run_dir.rmdir()
        raise

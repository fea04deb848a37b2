"""A finetune's output directory: checking ``--out`` before training, reusing a finished run,
the checkpoint directory of an interrupted one, and publishing the result atomically.

``out`` is either absent, empty, or a finished finetune (the marker file ``COMPLETE`` and the
record ``personavec_finetune.json``). Anything else — a file, a directory of other things — is
refused before any work, with or without ``--overwrite``: a finetune only ever replaces another
finetune. The result is written to a temporary directory beside ``out`` and renamed into place;
finished work is never deleted by a late error (a failed rename leaves it where it was written,
and the error says where). Checkpoints live in ``.<name>.partial/``, a run directory
(:func:`open_work`): locked while training, resumed when its identity matches. Written files
and directories follow the umask like every other personavec output (``0666``/``0777``
masked), not ``tempfile``'s ``0600``/``0700``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personavec.runs.run import open_run
from personavec.store import atomic_write_json
from personavec.training.finetune_config import FinetuneError

RECORD = "personavec_finetune.json"
MARKER = "COMPLETE"
WORK_SUFFIX = ".partial"


@dataclass
class FinetuneResult:
    """A finished finetune directory and its record."""

    path: Path
    record: dict[str, Any]
    reused: bool = False

    @property
    def merged(self) -> bool:
        return bool(self.record.get("merged"))


def is_finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished finetune (marker and record)."""
    return (folder / MARKER).is_file() and (folder / RECORD).is_file()


def work_dir(target: Path) -> Path:
    """Where an unfinished finetune of ``target`` keeps its checkpoints: ``.<name>.partial``."""
    return target.parent / f".{target.name}{WORK_SUFFIX}"


def check_output(out: str | Path) -> Path:
    """``out`` as a path a finetune may write; one-line :class:`FinetuneError` otherwise (a
    file, a directory that is not a finetune, a parent that is a file). Call before loading."""
    target = Path(out)
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise FinetuneError(f"{parent} is a file, so {target} cannot be created; fix --out")
    if target.exists() and not target.is_dir():
        raise FinetuneError(f"{target} is a file, not a finetune directory; pass another --out")
    if target.is_dir() and any(target.iterdir()) and not is_finished(target):
        raise FinetuneError(
            f"{target} exists and is not a finished finetune; pass another --out "
            "(a finetune never replaces other files)"
        )
    return target


def same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two finetune identities train the same adapter (dataset compared by content)."""
    keys = ("base", "config", "merged", "training")
    return all(a.get(k) == b.get(k) for k in keys) and (
        a["dataset"]["rows_sha256"] == b["dataset"]["rows_sha256"]
    )


def reuse(target: Path, identity: dict[str, Any], overwrite: bool) -> FinetuneResult | None:
    """The finished finetune in ``target`` when it has ``identity`` (and not ``overwrite``);
    ``None`` when there is none or it is to be replaced; an error when it differs."""
    check_output(target)
    if not is_finished(target):
        return None
    record = json.loads((target / RECORD).read_text())
    if same_run(record, identity) and not overwrite:
        return FinetuneResult(target, record, reused=True)
    if not overwrite:
        raise FinetuneError(
            f"{target} holds a finetune with other base, data or settings; pass another --out "
            "or --overwrite"
        )
    return None


@contextlib.contextmanager
def open_work(target: Path, identity: dict[str, Any], overwrite: bool) -> Iterator[Path]:
    """The locked checkpoint directory ``.<name>.partial`` of ``target``, opened through the
    run primitive (:func:`personavec.runs.run.open_run`) with the parts of ``identity`` that
    change the adapter: checkpoints of an interrupted run of the same finetune are resumed,
    those of another one refused unless ``overwrite``, and a second process is refused.
    Checkpoints left by an older personavec (``identity.json``, no ``config.json``) lack the
    weight hash, cannot be compared and are discarded, as that version did on any change."""
    keys = {k: identity.get(k) for k in ("base", "config", "merged", "training")}
    keys["rows_sha256"] = identity["dataset"]["rows_sha256"]
    work = work_dir(target)
    if (work / "identity.json").is_file() and not (work / "config.json").is_file():
        shutil.rmtree(work)  # an older personavec's checkpoints: no weight hash to compare
    with open_run(work, keys, outputs=("checkpoints/checkpoint-*",), overwrite=overwrite) as run:
        run.start()
        yield run.dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``open``/``mkdir`` would."""
    mask = _umask()
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)


def publish(target: Path, record: dict[str, Any], fill: Callable[[Path], None]) -> None:
    """Write a finished finetune: ``fill(tmp)`` writes the weights into a temporary directory
    beside ``target``; then the record and the marker, and a rename replaces ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        atomic_write_json(tmp / RECORD, record)
        (tmp / MARKER).write_text("complete\n")
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f"{tmp.name}-old"
        target.rename(old)
    try:
        tmp.rename(target)
    except OSError as exc:
        if old is not None:
            old.rename(target)
        raise FinetuneError(
            f"cannot move the finished finetune to {target} ({exc.strerror}); it is kept in {tmp}"
        ) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

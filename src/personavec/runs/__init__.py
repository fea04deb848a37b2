"""Run infrastructure used by every command that keeps work in a directory.

* :mod:`.run` — the run primitive: lock + full identity + resume / refuse / overwrite.
* :mod:`.identity` — content hashes of values, files and a loaded model's weights.
* :mod:`.rows` — resumable JSONL rows, appended a chunk at a time; record keys.
* :mod:`.judging` — the judge loop: cached in SQLite, with progress.
* :mod:`.plots` — every figure personavec draws.
* :mod:`.lock` — the directory lock.

This package sits below ``pipeline/``, ``training/``, ``screening/`` and ``studies/``: it imports
only ``core``, ``judges`` and the top-level helpers, never them.
"""

from personavec.runs.identity import content_sha256, file_sha256, weights_sha256
from personavec.runs.lock import RunLockedError, run_lock
from personavec.runs.rows import record_key, resumable_rows
from personavec.runs.run import Run, claim_run, locked_run_dir, open_run, prepare_run_dir

__all__ = [
    "Run",
    "RunLockedError",
    "claim_run",
    "content_sha256",
    "file_sha256",
    "locked_run_dir",
    "open_run",
    "prepare_run_dir",
    "record_key",
    "resumable_rows",
    "run_lock",
    "weights_sha256",
]

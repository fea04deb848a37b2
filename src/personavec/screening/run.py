"""A screening run: configuration, run directory, and the streaming in-process engine.

The run directory holds ``config.json`` (the run's identity), ``scores.jsonl`` (appended per
batch), and when finished ``scores.parquet``, ``summary.json``, ``histogram.png`` and
``report.md``. Rows are read, scored and appended one batch at a time, so memory is flat in the
dataset's size; a killed run resumes after its last finished row, scoring no row twice.

The directory is claimed with the run primitive (:func:`personavec.runs.run.claim_run`) under
the full identity (:func:`prepare_run`): every setting of :class:`ScreenConfig`, content hashes
of the data and of every vector, and the model's dtype, device and weights hash. Either engine
resumes the other's rows, since both score the same way.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from personavec.core.estimators import estimator_identity, requested_estimator
from personavec.core.models import LoadedModel
from personavec.core.vector import PersonaVector
from personavec.engines.factory import check_engine, make_engine
from personavec.errors import PersonavecError
from personavec.progress import stage
from personavec.runs.identity import file_sha256, files_sha256
from personavec.runs.run import claim_run, prepare_run_dir
from personavec.screening.data import BadRow, DataScan, Sample, ScreenDataError, iter_samples, scan
from personavec.screening.ray_engine import skipped_rows
from personavec.screening.score import (
    Mode,
    ScoreSettings,
    Target,
    Timing,
    make_targets,
    score_batch,
)
from personavec.screening.table import SCORES_JSONL, finished_through
from personavec.store import append_jsonl

OnBad = Literal["error", "skip"]
OUTPUTS = (
    SCORES_JSONL,
    "scores.parquet",
    "summary.json",
    "report.md",
    "histogram.png",
    "reference",
    "ray_input.parquet",
    "ray_output",
)
"""What a screening run writes (``ray_*``: written by the Ray engine of earlier versions)."""


@dataclass
class ScreenConfig:
    """Everything that decides a screening run's numbers.

    Attributes:
        data: JSONL, Parquet or saved-``datasets`` path.
        vectors: persona-vector files.
        model: model spec (``smollm2``, a checkpoint directory, …).
        layer: layer for every vector; default each vector's recommended layer.
        mode: ``full`` (ΔP with the model's own response) or ``prompt`` (no generation).
        own_column: a column holding the model's own responses (skips generation).
        max_new_tokens: tokens generated per own response (greedy).
        batch_size: samples per batch (appended to the table per batch).
        sample: screen a seeded random subsample of this many rows (dataset-level estimate).
        seed: subsample seed.
        on_bad: ``error`` (reject the data when any row is bad) or ``skip`` (report and skip).
        force: accept vectors from a related model (same hidden size).
        generator: engine of the own responses, ``hf`` or ``vllm`` (full mode only).
    """

    data: str
    vectors: list[str]
    model: str = "smollm2"
    layer: int | None = None
    mode: Mode = "full"
    own_column: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 16
    sample: int | None = None
    seed: int = 0
    on_bad: OnBad = "error"
    force: bool = False
    generator: str = "hf"

    def __post_init__(self) -> None:
        ScoreSettings(self.mode, self.max_new_tokens, self.batch_size)  # validates
        if self.mode == "full":  # prompt mode generates nothing
            check_engine(self.generator)
        if self.on_bad not in ("error", "skip"):
            raise PersonavecError(f"unknown --on-bad {self.on_bad!r}; use error or skip")
        if self.sample is not None and self.sample < 1:
            raise PersonavecError("--sample must be at least 1")

    @property
    def settings(self) -> ScoreSettings:
        return ScoreSettings(self.mode, self.max_new_tokens, self.batch_size)


def data_sha256(path: str | Path) -> str:
    """Content hash of the data: the file's bytes, or every file of a saved dataset directory
    (relative path and bytes)."""
    source = Path(path)
    if not source.is_dir():
        return file_sha256(source)
    digest = hashlib.sha256()
    for item in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(source)}|{file_sha256(item)}|".encode())
    return digest.hexdigest()[:16]


def vector_key(paths: Sequence[str]) -> list[str]:
    """Content hashes of vector files (a run's identity includes what the vectors hold)."""
    return files_sha256(list(paths))


def check_data(config: ScreenConfig) -> DataScan:
    """Validate every row (streaming); with ``on_bad="error"`` reject data with bad rows."""
    found = scan(config.data, own_column=config.own_column)
    if found.n_bad and config.on_bad == "error":
        first = found.bad[0]
        more = ", ".join(b.where.rsplit(":", 1)[-1] for b in found.bad[1:6])
        others = f" (also at {more}{', …' if found.n_bad > 6 else ''})" if more else ""
        raise ScreenDataError(
            f"{first.where}: {first.reason}; {found.n_bad} bad row(s){others}; "
            "fix them or pass --on-bad skip"
        )
    return found


def selected_indices(n_rows: int, sample: int | None, seed: int) -> set[int] | None:
    """The seeded subsample of row indices (``None`` = every row)."""
    if sample is None or sample >= n_rows:
        return None
    return set(random.Random(seed).sample(range(n_rows), sample))


def load_vectors(loaded: LoadedModel, paths: Sequence[str], *, force: bool) -> list[PersonaVector]:
    """Load vector files and check each fits the model (one-line error otherwise)."""
    return [PersonaVector.load(p, model=loaded.model, force=force) for p in paths]


def batches(
    items: Iterator[Sample | BadRow], size: int, keep: set[int] | None
) -> Iterator[tuple[list[Sample], list[BadRow]]]:
    """Groups of up to ``size`` samples, with the bad rows met on the way (input order)."""
    samples: list[Sample] = []
    bad: list[BadRow] = []
    for item in items:
        if keep is not None and item.index not in keep:
            continue
        if isinstance(item, BadRow):
            bad.append(item)
            continue
        samples.append(item)
        if len(samples) >= size:
            yield samples, bad
            samples, bad = [], []
    if samples or bad:
        yield samples, bad


@dataclass
class ScoredRun:
    """What :func:`run_in_process` did: rows scored now, rows reused, bad rows, timing."""

    run_dir: Path
    targets: list[Target]
    scored_now: int
    reused: int
    skipped: int
    timing: Timing


def prepare_run(
    config: ScreenConfig,
    run_dir: Path,
    model: dict[str, str],
    *,
    overwrite: bool = False,
) -> bool:
    """Claim the (locked) run directory for ``config`` scored by ``model`` (``dtype``,
    ``device`` and ``weights_sha256``); return whether earlier rows are resumed.

    Raises:
        PersonavecError: The directory holds a run with another identity (without
            ``overwrite``); the message names what changed.
    """
    unused = ("vectors", "force") + (("generator",) if config.mode != "full" else ())
    settings = {k: v for k, v in asdict(config).items() if k not in unused}
    identity = {
        **settings,
        "vectors": vector_key(config.vectors),
        **estimator_identity(requested_estimator()),  # the files' bytes don't say which
        "data_sha256": data_sha256(config.data),
        "dtype": model["dtype"],
        "device": model["device"],
    }
    run = claim_run(
        prepare_run_dir(run_dir),
        identity,
        outputs=OUTPUTS,
        overwrite=overwrite,
        recover={"generator": lambda _run: "hf"},  # runs from before --generator
    )
    run.start(info={"vector_paths": config.vectors}, weights_sha256=model["weights_sha256"])
    return run.resumed


@dataclass(frozen=True)
class Plan:
    """What is left to score: rows from ``start`` on, the subsample ``keep`` (None: all), the
    selected rows in all and those already in the table."""

    start: int
    keep: set[int] | None
    total: int
    reused: int


def plan(config: ScreenConfig, run_dir: Path, found: DataScan) -> Plan:
    """The rows still to score in ``run_dir`` (after the last finished one)."""
    start = finished_through(run_dir / SCORES_JSONL) + 1
    keep = selected_indices(found.n_rows, config.sample, config.seed)
    total = len(keep) if keep is not None else found.n_rows
    reused = sum(1 for i in keep if i < start) if keep is not None else start
    return Plan(start, keep, total, reused)


def run_in_process(
    loaded: LoadedModel,
    config: ScreenConfig,
    run_dir: str | Path,
    *,
    found: DataScan,
    show_progress: bool = True,
) -> ScoredRun:
    """Score every selected row into ``run_dir/scores.jsonl`` (resuming a partial run); the
    directory must have been claimed with :func:`prepare_run`."""
    directory = Path(run_dir)
    vectors = load_vectors(loaded, config.vectors, force=config.force)
    targets = make_targets(vectors, config.layer)
    table = directory / SCORES_JSONL
    todo = plan(config, directory, found)
    start, keep, total, reused = todo.start, todo.keep, todo.total, todo.reused
    engine = make_engine(config.generator, loaded) if config.mode == "full" else None
    timing = Timing()
    scored = skipped = 0
    items = iter_samples(config.data, own_column=config.own_column, start=start)
    with stage("screening", total, enabled=show_progress) as advance:
        advance(reused)
        for samples, bad in batches(items, config.batch_size, keep):
            rows: list[dict[str, Any]] = []
            if samples:
                rows, spent = score_batch(loaded, samples, targets, config.settings, engine)
                timing.add(spent)
            rows += skipped_rows(bad)
            rows.sort(key=lambda r: int(r["index"]))
            append_jsonl(table, rows)
            scored += len(samples)
            skipped += len(bad)
            advance(reused + scored + skipped)
    return ScoredRun(directory, targets, scored, reused, skipped, timing)

"""``screen()``: the library function behind ``personavec screen``.

Validates everything first (data rows, reference data, vectors against the model, filter
options), so bad input fails with one line before anything is written; then scores with the
in-process or the Ray engine, finishes the table (Parquet), the summary, histogram and report,
and optionally writes the kept samples.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from personavec.core.models import LoadedModel, load_model
from personavec.errors import PersonavecError
from personavec.progress import stage
from personavec.runs.identity import weights_sha256
from personavec.runs.run import locked_run_dir
from personavec.screening.data import DataScan, iter_samples
from personavec.screening.filtering import DropRule, FilterResult, thresholds, write_filtered
from personavec.screening.ray_engine import RayJob, RayOptions, run_on_ray, start_ray
from personavec.screening.report import summarize, write_histogram, write_report
from personavec.screening.run import (
    ScreenConfig,
    batches,
    check_data,
    load_vectors,
    plan,
    prepare_run,
    run_in_process,
)
from personavec.screening.score import Target, Timing, make_targets, score_column
from personavec.screening.table import SCORES_JSONL, column_values, write_parquet
from personavec.store import atomic_write_json, check_output_file

Engine = Literal["local", "ray"]


@dataclass
class ScreenResult:
    """Paths and headline numbers of a finished screen.

    Attributes:
        run_dir: the run directory.
        table: ``scores.parquet``.
        summary: what ``summary.json`` holds (ΔP mean and interval per vector, agreement, …).
        thresholds: score column → ΔP threshold, when a drop rule was given.
        filtered: the kept-samples file and counts, when written.
        timing: generation / capture seconds spent by this call (in-process engine).
    """

    run_dir: Path
    table: Path
    summary: dict[str, Any]
    thresholds: dict[str, float] | None
    filtered: FilterResult | None
    timing: Timing


def _validate_options(
    config: ScreenConfig,
    directory: Path,
    drop_above: str | None,
    write_to: str | None,
    engine: str,
    overwrite: bool,
) -> DropRule | None:
    if engine not in ("local", "ray"):
        raise PersonavecError(f"unknown --engine {engine!r}; use local or ray")
    if write_to is not None and drop_above is None:
        raise PersonavecError("--write-filtered needs --drop-above VALUE or pNN")
    if drop_above is not None and config.sample is not None:
        raise PersonavecError("filtering needs every row scored; drop --sample")
    if write_to is not None:  # an unrelated file is never replaced; this run's own output is
        check_output_file(
            write_to,
            overwrite=overwrite,
            flag="--write-filtered",
            replaceable=lambda path: _filtered_earlier(directory) == str(path),
        )
    return DropRule.parse(drop_above) if drop_above is not None else None


def _filtered_earlier(directory: Path) -> str | None:
    """The kept-samples file a finished run in ``directory`` wrote, if any."""
    try:
        summary = json.loads((directory / "summary.json").read_text(encoding="utf-8"))
        return str(summary["filtered"]["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_identity(loaded: LoadedModel, engine: Engine, ray: RayOptions) -> dict[str, str]:
    """The scoring model's part of a run's identity: dtype, device (the actors' with Ray) and
    weights hash."""
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    device = ray.device() if engine == "ray" else str(loaded.device)
    return {"dtype": dtype, "device": device, "weights_sha256": weights_sha256(loaded.model)}


def _score(
    loaded: LoadedModel,
    config: ScreenConfig,
    run_dir: Path,
    found: DataScan,
    *,
    engine: Engine,
    ray: RayOptions,
    overwrite: bool,
    show_progress: bool,
) -> Timing:
    identity = model_identity(loaded, engine, ray)
    if engine == "local":
        prepare_run(config, run_dir, identity, overwrite=overwrite)
        done = run_in_process(loaded, config, run_dir, found=found, show_progress=show_progress)
        return done.timing
    started = start_ray(ray)  # before writing anything: an unreachable cluster fails cleanly
    try:
        prepare_run(config, run_dir, identity, overwrite=overwrite)
        todo = plan(config, run_dir, found)
        items = iter_samples(config.data, own_column=config.own_column, start=todo.start)
        job = RayJob(
            config.model,
            config.vectors,
            config.layer,
            config.settings,
            config.force,
            identity["dtype"],
            config.generator,
        )
        with stage("screening", todo.total, enabled=show_progress) as advance:
            advance(todo.reused)
            run_on_ray(
                run_dir / SCORES_JSONL,
                batches(items, config.batch_size, todo.keep),
                job,
                ray,
                advance=lambda done: advance(todo.reused + done),
            )
    finally:
        if started:
            import ray as ray_module

            ray_module.shutdown()
    return Timing()


def _finish(
    run_dir: Path, config: ScreenConfig, targets: list[Target], limits: dict[str, float] | None
) -> tuple[Path, dict[str, Any]]:
    columns = [
        t.column(k)
        for t in targets
        for k in ("response", "own", "delta", "prompt_last", "delta_prompt")
    ]
    scores = run_dir / SCORES_JSONL
    full = config.mode == "full"
    table = write_parquet(scores, run_dir / "scores.parquet", columns, with_own=full)
    summary = summarize(scores, targets, config.mode)
    summary["data"] = config.data
    summary["sample"] = config.sample
    if limits is not None:
        summary["thresholds"] = limits
    atomic_write_json(run_dir / "summary.json", summary)
    write_histogram(run_dir, targets, config.mode, limits)
    return table, summary


def screen(
    config: ScreenConfig,
    run_dir: str | Path,
    *,
    loaded: LoadedModel | None = None,
    engine: Engine = "local",
    ray: RayOptions | None = None,
    reference: str | None = None,
    drop_above: str | None = None,
    write_filtered_to: str | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> ScreenResult:
    """Screen ``config.data`` into ``run_dir`` (resumable); see the module docstring.

    Args:
        reference: data believed clean; percentile thresholds are taken of its ΔP.
        drop_above: ``"1.5"`` (raw ΔP) or ``"p95"`` (percentile of the reference's ΔP, or of
            this data's when no reference is given).
        write_filtered_to: JSONL path for the kept samples (needs ``drop_above``).
    """
    with locked_run_dir(run_dir) as directory:
        return _screen_locked(
            config,
            directory,
            loaded=loaded,
            engine=engine,
            ray=ray,
            reference=reference,
            drop_above=drop_above,
            write_filtered_to=write_filtered_to,
            overwrite=overwrite,
            show_progress=show_progress,
        )


def _screen_locked(
    config: ScreenConfig,
    directory: Path,
    *,
    loaded: LoadedModel | None,
    engine: Engine,
    ray: RayOptions | None,
    reference: str | None,
    drop_above: str | None,
    write_filtered_to: str | None,
    overwrite: bool,
    show_progress: bool,
) -> ScreenResult:
    """:func:`screen` once the run directory is locked."""
    rule = _validate_options(config, directory, drop_above, write_filtered_to, engine, overwrite)
    found = check_data(config)
    ref_config = dataclasses.replace(config, data=reference, sample=None) if reference else None
    ref_found = check_data(ref_config) if ref_config is not None else None
    model = loaded if loaded is not None else load_model(config.model)
    targets = make_targets(load_vectors(model, config.vectors, force=config.force), config.layer)
    options = ray or RayOptions()
    timing = _score(
        model,
        config,
        directory,
        found,
        engine=engine,
        ray=options,
        overwrite=overwrite,
        show_progress=show_progress,
    )
    limits = None
    if rule is not None:
        limits = _limits(
            model,
            config,
            directory,
            targets,
            rule,
            ref_config,
            ref_found,
            options,
            overwrite=overwrite,
            show_progress=show_progress,
        )
    table, summary = _finish(directory, config, targets, limits)
    filtered = None
    if write_filtered_to is not None and limits is not None:
        filtered = _write_kept(config, directory, summary, limits, write_filtered_to)
    notes = [f"Bad rows skipped: {found.n_bad}."] if found.n_bad else []
    if limits is not None:
        notes += [f"Threshold {c}: {v:.4f} ({drop_above})." for c, v in limits.items()]
    if filtered is not None:
        notes.append(f"Kept {filtered.kept}, dropped {filtered.dropped} → {filtered.path}.")
    write_report(directory, config.data, targets, config.mode, summary, notes=notes)
    return ScreenResult(directory, table, summary, limits, filtered, timing)


def _write_kept(
    config: ScreenConfig,
    directory: Path,
    summary: dict[str, Any],
    limits: dict[str, float],
    target: str,
) -> FilterResult:
    """Write the kept rows to ``target`` and record them in ``summary.json``."""
    filtered = write_filtered(config.data, directory / SCORES_JSONL, limits, target)
    summary["filtered"] = {
        "path": str(filtered.path),
        "kept": filtered.kept,
        "dropped": filtered.dropped,
    }
    atomic_write_json(directory / "summary.json", summary)
    return filtered


def _limits(
    model: LoadedModel,
    config: ScreenConfig,
    directory: Path,
    targets: Any,
    rule: Any,
    ref_config: ScreenConfig | None,
    ref_found: Any,
    options: RayOptions,
    *,
    overwrite: bool,
    show_progress: bool,
) -> dict[str, float]:
    """ΔP thresholds per score column: of the reference data (scored into ``reference/``), or
    of this data when no reference is given."""
    source_dir = directory
    if ref_config is not None and ref_found is not None:
        source_dir = directory / "reference"
        _score(
            model,
            ref_config,
            source_dir,
            ref_found,
            engine="local",
            ray=options,
            overwrite=overwrite,
            show_progress=show_progress,
        )
    reference_values: dict[str, np.ndarray] = {
        score_column(t, config.mode): column_values(
            source_dir / SCORES_JSONL, score_column(t, config.mode)
        )
        for t in targets
    }
    return thresholds(rule, reference_values)

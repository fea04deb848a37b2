"""``personavec sweep``: dose-response over layers × coefficients, layer choice, calibration.

Every cell of the grid (layer, coefficient[, positions]) answers the same held-out questions with
the same per-sample seeds; all prompts of a cell go through one batched ``generate`` and the
coefficient-0 cell is the unsteered baseline, generated once and shared by every layer. The model
is loaded once by the caller.

The layer choice and calibration rules are in :mod:`personavec.pipeline.calibration`.

The vector file's ``recommended_layer``, ``recommended_coef`` and ``calibration`` are written at
the very end, atomically, in the unit the user swept (``calibration["relative"]``), so
``personavec generate --vector FILE`` steers the calibrated way by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from personavec.core.grammar import parse_numbers
from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.judges.base import Judge
from personavec.pipeline.calibration import (
    DEFAULT_COHERENCE_FLOOR,
    Calibration,
    DoseCurve,
    calibrate_coefficient,
    pick_layer,
    refine_calibration,
)
from personavec.pipeline.evaluate import open_evaluation, prepare_evaluation
from personavec.pipeline.evaluate_cells import run_cells
from personavec.pipeline.evaluate_types import CellResult, EvalSettings, Judges
from personavec.pipeline.sweep_report import write_sweep_report
from personavec.pipeline.sweep_types import SweepResult, calibration_record, recommended_coef
from personavec.runs.identity import vector_sha256
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec


def parse_grid(text: str) -> list[float]:
    """``"-2,-1,0,1,2"`` → sorted unique floats (0 is always added: the baseline)."""
    values = set(parse_numbers(text, float, "coefficients", "-2,-1,0,1,2"))
    if not values - {0.0}:
        raise PersonavecError("the coefficient grid is empty; pass e.g. --coefs -2,-1,0,1,2")
    return sorted(values | {0.0})


@dataclass
class _SweepRun:
    """What every stage of one sweep shares."""

    loaded: LoadedModel
    vector: PersonaVector
    unit: str
    settings: EvalSettings
    questions: list[str]
    judges: Judges
    out: Path
    show_progress: bool = True

    @classmethod
    def prepare(
        cls,
        loaded: LoadedModel,
        spec: TraitSpec,
        vector: PersonaVector,
        unit: str,
        judge: str | Judge,
        out: Path,
        show_progress: bool,
        **eval_fields: Any,
    ) -> _SweepRun:
        """Validated evaluation settings, questions and judges (see ``prepare_evaluation``)."""
        settings, questions, judges = prepare_evaluation(loaded, spec, judge, **eval_fields)
        return cls(loaded, vector, unit, settings, questions, judges, out, show_progress)

    def cell(self, layer: int, coef: float, positions: str) -> SteeringSetting:
        """One grid cell (validated: layer range, strength, zero vector)."""
        return SteeringSetting(self.vector, (layer,), coef, self.unit, positions)  # type: ignore[arg-type]

    def run(self, cells: Sequence[SteeringSetting], show_progress: bool) -> list[CellResult]:
        return run_cells(
            self.loaded,
            cells,
            self.questions,
            self.settings,
            self.judges,
            self.out,
            show_progress=show_progress,
        )


def sweep(
    loaded: LoadedModel,
    trait: str | TraitSpec,
    vector: PersonaVector,
    layers: Sequence[int],
    coefs: Sequence[float],
    *,
    positions: Sequence[str] = ("all",),
    relative: bool = False,
    questions: int | None = None,
    samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    seed: int = 0,
    judge: str | Judge = "contrast",
    coherence_judge: str = "heuristic",
    target_trait: float | None = None,
    target_change: float | None = None,
    coherence_floor: float = DEFAULT_COHERENCE_FLOOR,
    run_dir: str | Path,
    refine_steps: int = 3,
    vector_path: str | Path | None = None,
    write: bool = True,
    overwrite: bool = False,
    force: bool = False,
    show_progress: bool = True,
    judge_timeout_s: float | None = None,
    judge_concurrency: int = 8,
    engine: str = "hf",
) -> SweepResult:
    """Run the grid, choose the layer, calibrate, report; write the vector metadata last.

    ``coefs`` are raw multipliers, or fractions of the typical residual norm with
    ``relative=True``; the calibrated coefficient is stored in the same unit. Each grid cell is a
    :class:`SteeringSetting` (coefficient 0 is the baseline). With a target, the interpolated
    coefficient is refined by ``refine_steps`` extra measured cells (see
    :func:`refine_calibration`). The vector file (``vector_path``, default ``vector.path``) is
    rewritten only when ``write`` is true.
    """
    spec = trait if isinstance(trait, TraitSpec) else load_trait(trait)
    _check_targets(target_trait, target_change, coherence_floor)
    vector.check_compatible(loaded.model, force=force)
    grid, layer_list, position_list = _grid_axes(coefs, layers, positions)
    unit = "relative" if relative else "raw"
    steered = _grid_cells(vector, unit, grid, layer_list, position_list)
    target = vector_path if vector_path is not None else vector.path
    if write and target is None:
        raise PersonavecError("the vector has no file to write the calibration to; pass a path")
    run = _SweepRun.prepare(
        loaded,
        spec,
        vector,
        unit,
        judge,
        Path(run_dir),
        show_progress,
        questions=questions,
        samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        coherence_judge=coherence_judge,
        judge_timeout_s=judge_timeout_s,
        judge_concurrency=judge_concurrency,
        engine=engine,
    )
    grid_identity: dict[str, Any] = {
        "vector_sha256": vector_sha256(vector),
        "layers": layer_list,
        "coefs": grid,
        "positions": position_list,
        "unit": unit,
        "targets": [target_trait, target_change, coherence_floor, refine_steps],
    }
    identity = (run.out, loaded, spec, run.settings, run.questions)
    targets = (target_trait, target_change, coherence_floor, refine_steps)
    with open_evaluation(*identity, overwrite=overwrite, **grid_identity):
        axes = (layer_list, position_list, grid)
        written = Path(target) if write and target is not None else None
        return _measure(run, spec.name, steered, axes, targets, relative, written)


def _measure(
    run: _SweepRun,
    trait: str,
    steered: list[SteeringSetting],
    axes: tuple[list[int], list[str], list[float]],
    targets: tuple[float | None, float | None, float, int],
    relative: bool,
    vector_target: Path | None,
) -> SweepResult:
    """Measure the grid, choose the layer, calibrate, write the report, then the vector file."""
    layer_list, position_list, grid = axes
    target_trait, target_change, coherence_floor, refine_steps = targets
    baseline_cell = run.cell(layer_list[0], 0.0, position_list[0])
    results = run.run([baseline_cell, *steered], run.show_progress)
    curves = _curves(results[0], results[1:], layer_list, position_list, grid)
    best, reference = pick_layer(curves, coherence_floor)
    calibration = _calibrate(
        run, best, results, target_trait, target_change, coherence_floor, refine_steps
    )
    choice = (best, reference)
    result = _result(run, trait, results, curves, choice, calibration, relative, coherence_floor)
    write_sweep_report(result)
    if vector_target is not None:  # last, atomically: nothing half-written before it
        result.vector_written = write_calibration(run.vector, vector_target, result)
    return result


def _result(
    run: _SweepRun,
    trait: str,
    results: list[CellResult],
    curves: list[DoseCurve],
    choice: tuple[DoseCurve, float],
    calibration: Calibration | None,
    relative: bool,
    coherence_floor: float,
) -> SweepResult:
    """The sweep's result from its measured cells (``results[0]`` is the baseline)."""
    best, reference = choice
    tokens, seconds = sum(r.new_tokens for r in results), sum(r.generation_s for r in results)
    return SweepResult(
        run_dir=run.out,
        trait=trait,
        curves=curves,
        cells=results[1:],
        baseline=results[0],
        reference_coef=reference,
        layer=best.layer,
        positions=best.positions,
        calibration=calibration,
        relative=relative,
        coherence_floor=coherence_floor,
        judge=run.judges.describe(),
        settings=asdict(run.settings),
        tokens_per_s=tokens / seconds if seconds > 0 else float("nan"),
        new_tokens=tokens,
        generation_s=seconds,
    )


def _grid_cells(
    vector: PersonaVector, unit: str, grid: list[float], layers: list[int], positions: list[str]
) -> list[SteeringSetting]:
    """Every steered cell of the grid, validated here, before anything is generated."""
    return [
        SteeringSetting(vector, (layer,), coef, unit, pos)  # type: ignore[arg-type]
        for pos in positions
        for layer in layers
        for coef in grid
        if coef != 0
    ]


def _grid_axes(
    coefs: Sequence[float], layers: Sequence[int], positions: Sequence[str]
) -> tuple[list[float], list[int], list[str]]:
    """Sorted coefficients (0 added: the baseline), sorted layers, distinct position modes."""
    grid = sorted({float(c) for c in coefs} | {0.0})
    if len(grid) < 2:
        raise PersonavecError("the coefficient grid is empty; pass e.g. --coefs -2,-1,0,1,2")
    layer_list = sorted(set(layers))
    if not layer_list:
        raise PersonavecError("no layers given; pass e.g. --layers 8-20:4")
    return grid, layer_list, list(dict.fromkeys(positions)) or ["all"]


def _check_targets(
    target_trait: float | None, target_change: float | None, coherence_floor: float
) -> None:
    if target_trait is not None and target_change is not None:
        raise PersonavecError("pass --target-trait or --target-change, not both")
    if not coherence_floor <= 100:
        raise PersonavecError(f"coherence floor must be at most 100, got {coherence_floor:g}")


def _curves(
    baseline: CellResult,
    cells: Sequence[CellResult],
    layers: Sequence[int],
    positions: Sequence[str],
    grid: list[float],
) -> list[DoseCurve]:
    """One dose-response curve per (positions, layer); coefficient 0 is the shared baseline."""
    curves = []
    for pos in positions:
        for layer in layers:
            points = {0.0: baseline}
            points.update(
                {
                    r.cell.coef: r
                    for r in cells
                    if r.cell.layers == (layer,) and r.cell.positions == pos
                }
            )
            curves.append(
                DoseCurve(
                    layer,
                    pos,
                    grid,
                    [points[c].trait.mean for c in grid],
                    [points[c].coherence.mean for c in grid],
                )
            )
    return curves


def _calibrate(
    run: _SweepRun,
    best: DoseCurve,
    results: list[CellResult],
    target_trait: float | None,
    target_change: float | None,
    coherence_floor: float,
    refine_steps: int,
) -> Calibration | None:
    """Calibrate on ``best``'s curve and refine with measured cells (appended to ``results``)."""
    if target_trait is None and target_change is None:
        return None
    calibration = calibrate_coefficient(
        best,
        target_trait=target_trait,
        target_change=target_change,
        coherence_floor=coherence_floor,
    )
    if calibration.coef is None or refine_steps <= 0:
        return calibration

    def measure(coef: float) -> tuple[float, float]:
        (res,) = run.run([run.cell(best.layer, coef, best.positions)], False)
        results.append(res)
        return res.trait.mean, res.coherence.mean

    return refine_calibration(
        best, calibration, measure, steps=refine_steps, coherence_floor=coherence_floor
    )


def write_calibration(vector: PersonaVector, path: Path, result: SweepResult) -> Path:
    """Rewrite the vector file atomically with the sweep's recommendation."""
    meta = vector.meta.model_copy(
        update={
            "recommended_layer": result.layer,
            "recommended_coef": recommended_coef(result),
            "calibration": calibration_record(result),
        }
    )
    return dataclasses.replace(vector, meta=meta).save(path)  # keeps norms and percentiles

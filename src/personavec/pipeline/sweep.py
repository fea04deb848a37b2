"""``personavec sweep``: dose-response over layers × coefficients, layer choice, calibration.

Every cell of the grid (layer, coefficient[, positions]) answers the same held-out questions with
the same per-sample seeds; all prompts of a cell go through one batched ``generate`` and the
coefficient-0 cell is the unsteered baseline, generated once and shared by every layer. The model
is loaded once by the caller.

**Layer choice** (the paper's rule: steer each layer with the same coefficient, take the layer
with the highest judged trait score). The *reference coefficient* is the largest grid coefficient
in the steering direction (positive when the grid has positive values, else the most negative)
at which at least half of the swept layers keep mean coherence ≥ the floor; if there is none,
the smallest one in that direction. Among layers coherent at the reference coefficient (all
layers if none is), the one with the highest (for negative steering: lowest) mean trait score
wins.

**Calibration** (:func:`calibrate_coefficient`) on the chosen layer's curve: the target is an
absolute trait score, or a change from the baseline. Along the coefficients on the target's side
of 0 (ordered by |coef|, starting at the baseline), the trait curve is replaced by its monotone
envelope (running max, or running min when suppressing) and interpolated linearly; the answer is
the smallest |coef| where the envelope reaches the target, provided the linearly interpolated
coherence there is ≥ the floor. Otherwise there is no coefficient, and the reason says why.

The vector file's ``recommended_layer``, ``recommended_coef`` and ``calibration`` are written at
the very end, atomically, in the unit the user swept (``calibration["relative"]``), so
``personavec generate --vector FILE`` steers the calibrated way by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.judges.base import Judge
from personavec.pipeline.evaluate import (
    CellResult,
    EvalSettings,
    Judges,
    prepare_evaluation,
    run_cells,
)
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec

DEFAULT_COHERENCE_FLOOR = 75.0
"""The paper reports steering only where mean coherence stays above 75."""


@dataclass
class DoseCurve:
    """Mean trait score and coherence against the coefficient at one layer (0 = baseline)."""

    layer: int
    positions: str
    coefs: list[float]
    trait: list[float]
    coherence: list[float]

    def at(self, coef: float) -> tuple[float, float]:
        index = self.coefs.index(coef)
        return self.trait[index], self.coherence[index]


@dataclass
class Calibration:
    """A calibrated coefficient, or ``coef=None`` with the reason it is unreachable."""

    coef: float | None
    target_trait: float | None
    reason: str
    predicted_trait: float | None = None
    predicted_coherence: float | None = None


@dataclass
class SweepResult:
    run_dir: Path
    trait: str
    curves: list[DoseCurve]
    cells: list[CellResult]
    baseline: CellResult
    reference_coef: float
    layer: int
    positions: str
    calibration: Calibration | None
    relative: bool
    coherence_floor: float
    judge: str
    tokens_per_s: float
    new_tokens: int
    generation_s: float
    vector_written: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def parse_grid(text: str) -> list[float]:
    """``"-2,-1,0,1,2"`` → sorted unique floats (0 is always added: the baseline)."""
    try:
        values = {float(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise PersonavecError(
            f"cannot read coefficients {text!r}; write e.g. -2,-1,0,1,2"
        ) from None
    if not values - {0.0}:
        raise PersonavecError("the coefficient grid is empty; pass e.g. --coefs -2,-1,0,1,2")
    if any(not math.isfinite(v) for v in values):
        raise PersonavecError(f"coefficients must be finite numbers, got {text!r}")
    return sorted(values | {0.0})


def _interp(x: float, x0: float, x1: float, y0: float, y1: float) -> float:
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def calibrate_coefficient(
    curve: DoseCurve,
    *,
    target_trait: float | None = None,
    target_change: float | None = None,
    coherence_floor: float = DEFAULT_COHERENCE_FLOOR,
) -> Calibration:
    """Smallest |coef| whose interpolated trait reaches the target with coherence ≥ floor.

    See the module docstring. ``target_change`` is relative to the curve's coefficient-0 point.
    """
    if (target_trait is None) == (target_change is None):
        raise PersonavecError("give exactly one of target_trait or target_change")
    if 0.0 not in curve.coefs:
        raise PersonavecError("the curve has no coefficient-0 (baseline) point")
    base_trait, base_coherence = curve.at(0.0)
    target = float(target_trait if target_trait is not None else base_trait + target_change)  # type: ignore[operator]
    if target == base_trait:
        return Calibration(
            0.0, target, "the baseline already has this score", base_trait, base_coherence
        )
    up = target > base_trait
    side = sorted((c for c in curve.coefs if (c > 0) == up and c != 0), key=abs)
    if not side:
        return Calibration(
            None, target, f"the grid has no {'positive' if up else 'negative'} coefficients"
        )
    points = [(0.0, base_trait, base_coherence)] + [(c, *curve.at(c)) for c in side]
    envelope = [points[0][1]]
    for _, trait, _ in points[1:]:
        envelope.append(max(envelope[-1], trait) if up else min(envelope[-1], trait))
    for k in range(1, len(points)):
        reached = envelope[k] >= target if up else envelope[k] <= target
        if not reached:
            continue
        (c0, _, h0), (c1, _, h1) = points[k - 1], points[k]
        e0, e1 = envelope[k - 1], envelope[k]
        coef = c1 if e1 == e0 else c0 + (c1 - c0) * (target - e0) / (e1 - e0)
        coherence = _interp(abs(coef), abs(c0), abs(c1), h0, h1)
        if coherence < coherence_floor:
            return Calibration(
                None,
                target,
                f"trait {target:.1f} needs coef ≈ {coef:+.3g}, where coherence ≈ "
                f"{coherence:.1f} < floor {coherence_floor:g}",
                target,
                coherence,
            )
        return Calibration(coef, target, "interpolated on the monotone envelope", target, coherence)
    best = envelope[-1]
    return Calibration(
        None,
        target,
        f"the trait reaches only {best:.1f} (target {target:.1f}) within the grid; "
        "extend the coefficients",
    )


def refine_calibration(
    curve: DoseCurve,
    calibration: Calibration,
    measure: Callable[[float], tuple[float, float]],
    *,
    steps: int = 3,
    coherence_floor: float = DEFAULT_COHERENCE_FLOOR,
) -> Calibration:
    """Replace an interpolated coefficient by a measured one (false position on real scores).

    Dose-response curves of small models are often threshold-like, so a straight line between
    grid points can miss the target badly. Starting from the grid points that bracket the target
    (measured trait below / at-or-above it), each step measures the coefficient interpolated
    between the bracket's *measured* scores and narrows the bracket. The answer is the measured
    coefficient closest to the target with coherence ≥ the floor; its score is what a re-run with
    the same questions and seeds gives.
    """
    target = calibration.target_trait
    if calibration.coef is None or target is None:
        return calibration
    up = calibration.coef > 0
    side = sorted((c for c in curve.coefs if (c > 0) == up or c == 0), key=abs)
    measured = {c: curve.at(c) for c in side}
    above = [c for c in side if _reached(measured[c][0], target, up)]
    if not above:
        return calibration
    high = above[0]
    low = max((c for c in side if abs(c) < abs(high)), key=abs, default=0.0)
    _narrow(measured, low, high, target, up, measure, steps)
    best = _closest_coherent(measured, target, coherence_floor)
    if best is None:
        return calibration
    trait, coherence = measured[best]
    return Calibration(
        best,
        target,
        f"measured: trait {trait:.1f} at coef {best:+.4g} after {len(measured) - len(side)} "
        "refinement steps",
        trait,
        coherence,
    )


def _reached(trait: float, target: float, up: bool) -> bool:
    return trait >= target if up else trait <= target


def _narrow(
    measured: dict[float, tuple[float, float]],
    low: float,
    high: float,
    target: float,
    up: bool,
    measure: Callable[[float], tuple[float, float]],
    steps: int,
) -> None:
    """False-position steps between ``low`` (short of the target) and ``high`` (reaching it);
    each measured coefficient is added to ``measured``."""
    for _ in range(steps):
        (t0, _), (t1, _) = measured[low], measured[high]
        coef = (low + high) / 2 if t1 == t0 else low + (high - low) * (target - t0) / (t1 - t0)
        coef = min(max(coef, min(low, high)), max(low, high))
        if coef in measured:
            coef = (low + high) / 2
        if coef in measured:
            break
        measured[coef] = measure(coef)
        if _reached(measured[coef][0], target, up):
            high = coef
        else:
            low = coef


def _closest_coherent(
    measured: dict[float, tuple[float, float]], target: float, coherence_floor: float
) -> float | None:
    """The non-zero coefficient whose trait is closest to ``target`` with coherence ≥ floor."""
    candidates = [
        (abs(trait - target), abs(c), c)
        for c, (trait, coherence) in measured.items()
        if c != 0 and coherence >= coherence_floor
    ]
    return min(candidates)[2] if candidates else None


def pick_layer(
    curves: Sequence[DoseCurve], coherence_floor: float = DEFAULT_COHERENCE_FLOOR
) -> tuple[DoseCurve, float]:
    """The curve (layer, positions) with the best trait score at the reference coefficient.

    Returns ``(curve, reference_coef)``; the rule is in the module docstring.
    """
    if not curves:
        raise PersonavecError("no dose-response curves to choose from")
    coefs = sorted({c for curve in curves for c in curve.coefs if c != 0})
    positive = [c for c in coefs if c > 0]
    up = bool(positive)
    side = sorted(positive if up else [c for c in coefs if c < 0], key=abs)
    if not side:
        raise PersonavecError("the coefficient grid is empty; pass e.g. --coefs -2,-1,0,1,2")
    reference = side[0]
    for coef in side:
        having = [c for c in curves if coef in c.coefs]
        coherent = [c for c in having if c.at(coef)[1] >= coherence_floor]
        if having and 2 * len(coherent) >= len(having):
            reference = coef
    having = [c for c in curves if reference in c.coefs]
    coherent = [c for c in having if c.at(reference)[1] >= coherence_floor] or having
    sign = 1.0 if up else -1.0
    best = max(coherent, key=lambda c: (sign * c.at(reference)[0], -c.layer))
    return best, reference


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

    @classmethod
    def prepare(
        cls,
        loaded: LoadedModel,
        spec: TraitSpec,
        vector: PersonaVector,
        unit: str,
        judge: str | Judge,
        out: Path,
        **eval_fields: Any,
    ) -> _SweepRun:
        """Validated evaluation settings, questions and judges (see ``prepare_evaluation``)."""
        settings, questions, judges = prepare_evaluation(loaded, spec, judge, **eval_fields)
        return cls(loaded, vector, unit, settings, questions, judges, out)

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
    force: bool = False,
    show_progress: bool = True,
) -> SweepResult:
    """Run the grid, choose the layer, calibrate, report; write the vector metadata last.

    ``coefs`` are raw multipliers, or fractions of the typical residual norm with
    ``relative=True``; the calibrated coefficient is stored in the same unit. Each grid cell is a
    :class:`SteeringSetting` (coefficient 0 is the baseline). With a target, the interpolated
    coefficient is refined by ``refine_steps`` extra measured cells (see
    :func:`refine_calibration`). The vector file (``vector_path``, default ``vector.path``) is
    rewritten only when ``write`` is true.
    """
    from personavec.pipeline.sweep_report import write_sweep_report

    spec = trait if isinstance(trait, TraitSpec) else load_trait(trait)
    _check_targets(target_trait, target_change, coherence_floor)
    vector.check_compatible(loaded.model, force=force)
    grid, layer_list, position_list = _grid_axes(coefs, layers, positions)
    unit = "relative" if relative else "raw"
    # every cell is validated here, before anything is generated
    steered = [
        SteeringSetting(vector, (layer,), coef, unit, pos)  # type: ignore[arg-type]
        for pos in position_list
        for layer in layer_list
        for coef in grid
        if coef != 0
    ]
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
        questions=questions,
        samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        coherence_judge=coherence_judge,
    )
    baseline_cell = run.cell(layer_list[0], 0.0, position_list[0])
    results = run.run([baseline_cell, *steered], show_progress)
    baseline, cells = results[0], results[1:]
    curves = _curves(baseline, cells, layer_list, position_list, grid)
    best, reference = pick_layer(curves, coherence_floor)
    calibration = _calibrate(
        run, best, results, target_trait, target_change, coherence_floor, refine_steps
    )
    tokens, seconds = sum(r.new_tokens for r in results), sum(r.generation_s for r in results)
    result = SweepResult(
        run_dir=run.out,
        trait=spec.name,
        curves=curves,
        cells=cells,
        baseline=baseline,
        reference_coef=reference,
        layer=best.layer,
        positions=best.positions,
        calibration=calibration,
        relative=relative,
        coherence_floor=coherence_floor,
        judge=run.judges.describe(),
        settings=asdict(run.settings),
        vector_written=Path(target) if write and target is not None else None,
        tokens_per_s=tokens / seconds if seconds > 0 else float("nan"),
        new_tokens=tokens,
        generation_s=seconds,
    )
    write_sweep_report(result)
    if result.vector_written is not None:  # last, atomically: nothing half-written before it
        result.vector_written = write_calibration(vector, result.vector_written, result)
    return result


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


def calibration_record(result: SweepResult) -> dict[str, Any]:
    """What goes into the vector's ``calibration`` metadata."""
    cal = result.calibration
    return {
        "grid": {
            "layers": sorted({c.layer for c in result.curves}),
            "coefs": result.curves[0].coefs,
            "positions": sorted({c.positions for c in result.curves}),
        },
        "curves": [asdict(c) for c in result.curves],
        "target": None
        if cal is None
        else {"trait": cal.target_trait, "coef": cal.coef, "reason": cal.reason},
        "floor": result.coherence_floor,
        "judge": result.judge,
        "positions": result.positions,
        "relative": result.relative,
        "reference_coef": result.reference_coef,
        "settings": result.settings,
        "run_dir": str(result.run_dir),
    }


def recommended_coef(result: SweepResult) -> float | None:
    """The calibrated coefficient; without a target, the reference coefficient when coherent."""
    if result.calibration is not None:
        return result.calibration.coef
    best = next(
        c for c in result.curves if c.layer == result.layer and c.positions == result.positions
    )
    _, coherence = best.at(result.reference_coef)
    return result.reference_coef if coherence >= result.coherence_floor else None


def write_calibration(vector: PersonaVector, path: Path, result: SweepResult) -> Path:
    """Rewrite the vector file atomically with the sweep's recommendation."""
    meta = vector.meta.model_copy(
        update={
            "recommended_layer": result.layer,
            "recommended_coef": recommended_coef(result),
            "calibration": calibration_record(result),
        }
    )
    updated = PersonaVector(dict(vector.vectors), meta, typical_norm=vector.typical_norm)
    return updated.save(path)

"""What a sweep produces: its result type and the calibration record written into vector files.

Report modules and the CLI depend on these types; :mod:`personavec.pipeline.sweep` produces them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from personavec.pipeline.calibration import Calibration, DoseCurve
from personavec.pipeline.evaluate_types import CellResult


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

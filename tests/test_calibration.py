"""``refine_calibration``: measured false-position refinement on constructed response functions."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from personavec.pipeline.sweep import Calibration, DoseCurve, refine_calibration

GRID = [0.0, 1.0, 2.0, 4.0]
TARGET = 50.0


def ramp(c: float) -> float:
    """Threshold-like: trait 10 below c = 1.2, 90 above 1.4, linear in between (50 at 1.3)."""
    return 10.0 + 80.0 * min(max((c - 1.2) / 0.2, 0.0), 1.0)


def sigmoid(c: float) -> float:
    """Monotone and steep, asymmetric in the grid bracket [1, 2]: 50 at c = 1.3."""
    return 10.0 + 80.0 / (1.0 + math.exp(-8.0 * (c - 1.3)))


class Meter:
    """A measuring callable that records every coefficient it is asked about."""

    def __init__(self, trait: Callable[[float], float], coherence: Callable[[float], float]):
        self.trait, self.coherence = trait, coherence
        self.calls: list[float] = []

    def __call__(self, coef: float) -> tuple[float, float]:
        self.calls.append(coef)
        return self.trait(coef), self.coherence(coef)

    def curve(self, grid: list[float]) -> DoseCurve:
        return DoseCurve(
            layer=5,
            positions="all",
            coefs=grid,
            trait=[self.trait(c) for c in grid],
            coherence=[self.coherence(c) for c in grid],
        )


def always_coherent(c: float) -> float:
    return 90.0


def check_closest(result: Calibration, meter: Meter, grid: list[float], floor: float) -> None:
    """The answer is the measured coefficient (grid or refinement) closest to the target."""
    measured = [c for c in grid + meter.calls if c != 0 and meter.coherence(c) >= floor]
    assert result.coef in measured
    assert result.predicted_trait == meter.trait(result.coef)
    assert result.predicted_coherence == meter.coherence(result.coef)
    best = min(abs(meter.trait(c) - TARGET) for c in measured)
    assert abs(result.predicted_trait - TARGET) == best


@pytest.mark.parametrize("trait", [ramp, sigmoid])
def test_refinement_converges_to_target(trait: Callable[[float], float]) -> None:
    errors = []
    for steps in (1, 3, 8):
        meter = Meter(trait, always_coherent)
        start = Calibration(1.5, TARGET, "interpolated")  # what a straight line would say
        result = refine_calibration(meter.curve(GRID), start, meter, steps=steps)
        assert len(meter.calls) == steps
        # Every probe lies inside the grid bracket that holds the target, [1, 2].
        assert all(1.0 < c < 2.0 for c in meter.calls)
        check_closest(result, meter, GRID, 75.0)
        errors.append(abs(result.predicted_trait - TARGET))
    assert errors[0] >= errors[1] >= errors[2]
    assert errors[2] < 1.0
    # 1.3 is where the trait crosses 50; after 8 steps the answer is close to it.
    assert abs(result.coef - 1.3) < 0.01  # type: ignore[operator]


def test_ramp_first_steps_by_hand() -> None:
    """False position on measured scores: 1 + (50−10)/(90−10) = 1.5 (scores 90: new upper end);
    then 1 + 0.5·(40/80) = 1.25 (scores 30: new lower end); then 1.25 + 0.25·(20/60) = 4/3."""
    meter = Meter(ramp, always_coherent)
    result = refine_calibration(meter.curve(GRID), Calibration(1.5, TARGET, "i"), meter, steps=3)
    assert meter.calls[0] == pytest.approx(1.5)  # 1.5 is not on the grid, so it is measured
    assert meter.calls[1] == pytest.approx(1.25)
    assert meter.calls[2] == pytest.approx(4 / 3)
    assert result.coef == pytest.approx(4 / 3)
    assert result.predicted_trait == pytest.approx(10 + 80 * (4 / 3 - 1.2) / 0.2)


def test_coherence_floor_excludes_incoherent_probes() -> None:
    def coherence(c: float) -> float:
        return 90.0 if c < 1.28 else 40.0  # the model breaks down before the target

    meter = Meter(ramp, coherence)
    result = refine_calibration(meter.curve(GRID), Calibration(1.5, TARGET, "i"), meter, steps=6)
    assert result.coef is not None and result.coef < 1.28
    check_closest(result, meter, GRID, 75.0)


def test_negative_direction() -> None:
    """Suppressing: the trait falls as the coefficient goes negative; mirror of the ramp."""
    grid = [-4.0, -2.0, -1.0, 0.0]

    def falling(c: float) -> float:
        return 100.0 - ramp(-c)

    meter = Meter(falling, always_coherent)
    result = refine_calibration(meter.curve(grid), Calibration(-1.5, TARGET, "i"), meter, steps=8)
    assert all(-2.0 < c < -1.0 for c in meter.calls)
    check_closest(result, meter, grid, 75.0)
    assert abs(result.coef + 1.3) < 0.01  # type: ignore[operator]


def test_nothing_to_refine() -> None:
    meter = Meter(ramp, always_coherent)
    curve = meter.curve(GRID)
    unreachable = Calibration(None, TARGET, "the trait reaches only 40")
    assert refine_calibration(curve, unreachable, meter) is unreachable
    # No grid point reaches a target of 95: nothing brackets it.
    high = Calibration(3.0, 95.0, "i")
    assert refine_calibration(curve, high, meter) is high
    assert meter.calls == []

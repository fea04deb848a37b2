"""Dose-response curves, the layer choice and coefficient calibration of a sweep.

**Layer choice** (:func:`pick_layer`, the paper's rule: steer each layer with the same
coefficient, take the layer with the highest judged trait score). The *reference coefficient* is
the largest grid coefficient in the steering direction (positive when the grid has positive
values, else the most negative) at which at least half of the swept layers keep mean coherence ≥
the floor; if there is none, the smallest one in that direction. Among layers coherent at the
reference coefficient (all layers if none is), the one with the highest (for negative steering:
lowest) mean trait score wins.

**Calibration** (:func:`calibrate_coefficient`) on the chosen layer's curve: the target is an
absolute trait score, or a change from the baseline. Along the coefficients on the target's side
of 0 (ordered by |coef|, starting at the baseline), the trait curve is replaced by its monotone
envelope (running max, or running min when suppressing) and interpolated linearly; the answer is
the smallest |coef| where the envelope reaches the target, provided the linearly interpolated
coherence there is ≥ the floor. Otherwise there is no coefficient, and the reason says why.
:func:`refine_calibration` then replaces the interpolated coefficient by a measured one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from personavec.errors import PersonavecError

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

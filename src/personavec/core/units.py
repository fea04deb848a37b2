"""Strength units: a coefficient is raw (``coef · v``) or relative (``coef · typical_norm_L · v̂``).

Whatever supplies the number — a flag, a file's calibration, a request body — the *added vector*
must be the same for the same meaning: :func:`convert_coef` turns a coefficient in one unit into
the one that adds the same vector in the other, and :data:`MAX_NORM_RATIO` bounds how much may be
added at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from personavec.core.grammar import format_layers
from personavec.core.vector import PersonaVector
from personavec.errors import SteeringError

Unit = Literal["raw", "relative"]
UNITS: tuple[str, ...] = get_args(Unit)
MAX_NORM_RATIO = 100.0
"""An added vector longer than this many times the layer's typical residual norm is refused.
A vector without typical norms is measured against its own norm at the layer instead (a raw
``|coef|`` over this is refused); ``‖v_L‖`` is at most about twice the typical norm, being a
difference of two mean activations, so the bound stays within ``2 ×`` this ratio."""
_SAME_FACTOR = 1e-6
"""Relative tolerance within which per-layer unit-conversion factors count as one factor."""


def unit_of(relative: bool | None) -> Unit | None:
    """The unit named by a ``--relative/--raw`` flag (``None``: not given)."""
    return None if relative is None else ("relative" if relative else "raw")


def convert_coef(
    vector: PersonaVector,
    layers: Sequence[int],
    coef: float,
    source: Unit,
    target: Unit,
    readout: str | None = None,
) -> float:
    """``coef`` in unit ``source`` as the coefficient in unit ``target`` that adds the same
    vector: ``coef_raw = coef_rel · typical_norm[L] / ‖v_L‖`` (and back).

    Raises:
        SteeringError: the vector records no typical norms, or the conversion factor differs
            between ``layers``; the message says to give the coefficient explicitly.
    """
    if source == target:
        return coef
    hint = f"give --coef in {target} units"
    if vector.typical_norm is None:
        raise SteeringError(
            f"the file's coefficient {coef:g} is {source} and the vector records no typical "
            f"norms to convert it to {target}; {hint}"
        )
    factors = [vector.relative_scale(layer, readout) for layer in layers]
    if not factors or factors[0] <= 0:
        raise SteeringError(f"the typical norm at layer {layers[0]} is zero; {hint}")
    if any(abs(f - factors[0]) > _SAME_FACTOR * factors[0] for f in factors):
        raise SteeringError(
            f"the file's {source} coefficient {coef:g} means a different {target} coefficient "
            f"at each of layers {format_layers(layers)}; {hint}"
        )
    return coef * factors[0] if target == "raw" else coef / factors[0]

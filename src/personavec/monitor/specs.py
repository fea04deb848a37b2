"""What a monitor watches (:class:`MonitorSpec`), its steer-back rule, and what it records."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from personavec.core.positions import PositionMode
from personavec.core.steering import Intervention
from personavec.core.vector import PersonaVector
from personavec.errors import SteeringError

AlertCallback = Callable[[int, int, str, float], None]
"""``on_alert(sequence, token_index, name, value)``."""


@dataclass(frozen=True)
class MonitorSpec:
    """One vector to watch at one layer.

    Attributes:
        name: label of the readings (unique within a monitor).
        layer: layer under the block-output convention (0 = embeddings, L = output of block L).
        vector: ``[hidden]``, unnormalised; readings are ``h · v / ‖v‖``.
        threshold: alert when a generated token's value is strictly above it (None: no alerts).
    """

    name: str
    layer: int
    vector: torch.Tensor
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise SteeringError("a monitor spec needs a non-empty name")
        if self.vector.ndim != 1:
            raise SteeringError(
                f"monitor vector {self.name!r} must be 1-D [hidden], got {tuple(self.vector.shape)}"
            )
        if not torch.isfinite(self.vector).all():
            raise SteeringError(f"monitor vector {self.name!r} contains NaN or inf")
        if float(self.vector.float().norm()) == 0.0:
            raise SteeringError(f"monitor vector {self.name!r} is zero; pick another layer")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise SteeringError(f"threshold {self.threshold!r} is not a finite number")

    @classmethod
    def from_vector(
        cls,
        vector: PersonaVector,
        layer: int | None = None,
        *,
        name: str | None = None,
        threshold: float | None = None,
        readout: str | None = None,
    ) -> MonitorSpec:
        """A spec for a persona vector at ``layer`` (default: its recommended layer)."""
        layer = vector.layer_or_recommended(layer)
        return cls(name or vector.meta.trait, layer, vector.at(layer, readout).float(), threshold)


@dataclass(frozen=True)
class ConditionalSteering:
    """Steer against a trait only where it shows: ``h ← h − coef · v`` when ``h · v̂ > threshold``.

    Attributes:
        spec: what to measure and where (``spec.layer``); ``spec.vector`` is also what is
            subtracted (unnormalised, times ``coef``).
        threshold: projection (hidden units) above which a token is steered.
        coef: multiplier of the subtraction (``≥ 0`` pushes away from the trait).
        positions: which tokens may be steered: ``all`` (default), ``prompt`` or ``response``.
        rows: batch rows the rule applies to (``None``: every row).
    """

    spec: MonitorSpec
    threshold: float
    coef: float
    positions: PositionMode = "all"
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.intervention()  # the one validation (core.steering.check_operator)

    def intervention(self) -> Intervention:
        """The ``guard`` operator it is: gate ``h · v̂ > threshold``, then add ``−coef · v``."""
        return Intervention(
            self.spec.layer,
            self.spec.vector,
            -self.coef,
            "guard",
            self.positions,
            threshold=self.threshold,
            rows=self.rows,
        )


class Reading(NamedTuple):
    """One token's values: ``(position, is_prompt, {name: value})``."""

    position: int
    is_prompt: bool
    values: dict[str, float]


class Alert(NamedTuple):
    """A monitored value above its spec's threshold: sequence, token index, spec name, value."""

    sequence: int
    token_index: int
    name: str
    value: float

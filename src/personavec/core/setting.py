"""One steering setting: which vector, where, how strong, in which unit, with which operator.

:class:`SteeringSetting` is the one validated type every command and library entry point uses
(``generate``, ``steer``, ``chat``, ``evaluate``, ``sweep``, ``export-gguf``, the demo).
:meth:`SteeringSetting.from_vector` is the one place where omitted parts are filled from the
vector file's metadata (recommended layer and coefficient, and the unit and positions the
coefficient was calibrated in).

Layer rule (the same everywhere): layers ``0..n_layers`` are valid; 0 is the embedding output and
``L`` the output of decoder block ``L``. (Exporters to other runtimes may support fewer layers and
say so with their own error.)

The text grammars (layers ``12``, ``8,12,16``, ``8-16``, ``8-20:4``; spec strings
``FILE[:layer[:coef[:positions[:op]]]]``; cap thresholds ``2.5`` or ``p95``) live in
:mod:`personavec.core.grammar`; :func:`parse_layers` is re-exported here and
:func:`parse_steer_spec` turns a spec string into a setting.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import torch
from torch import nn

from personavec.core.grammar import (
    SPEC_HELP,
    Percentile,
    format_layers,
    parse_coef,
    parse_layers,
    parse_threshold,
    split_spec,
)
from personavec.core.layers import check_layer
from personavec.core.positions import PositionMode
from personavec.core.steering import (
    Bound,
    Intervention,
    MultiLayerMode,
    SteeringHandle,
    apply_steering,
    check_operator,
)
from personavec.core.units import MAX_NORM_RATIO, UNITS, Unit, convert_coef, unit_of
from personavec.core.vector import PersonaVector
from personavec.errors import SteeringError, VectorFileError

SettingOp = Literal["add", "ablate", "cap"]
SETTING_OPS: tuple[str, ...] = get_args(SettingOp)


@dataclass(frozen=True, eq=False)
class SteeringSetting:
    """A persona vector plus how to apply it; validated across fields when constructed.

    Frozen: change one with :func:`dataclasses.replace`, which validates again. Compared by
    identity (the vector holds tensors); compare :meth:`identity` for "same setting".

    Attributes:
        vector: the persona vector (rows ``[n_layers + 1, hidden]``).
        layers: sorted distinct layers in ``0..n_layers``.
        coef: ``add`` multiplier: raw (``h += coef·v``) or, with unit ``relative``, a fraction of
            the layer's typical residual norm (added norm ``coef · typical_norm[L]``). ``coef == 0``
            with ``add`` is the unsteered baseline. Ignored by ``ablate`` and ``cap``.
        unit: ``"raw"`` or ``"relative"``.
        positions: ``all``, ``prompt`` or ``response``.
        op: ``add``, ``ablate`` or ``cap``.
        mode: several layers: ``stack`` (each layer's own vector) or ``incremental``
            (``v_L − v_{L−1}`` after the first layer of a contiguous range).
        threshold: ``cap`` only: the projection ``h·v̂`` (hidden units) to cap at.
        bound: ``cap`` only: ``max`` caps from above, ``min`` floors from below.
        readout: which readout of the vector (default: the file's).
    """

    vector: PersonaVector
    layers: tuple[int, ...]
    coef: float = 1.0
    unit: Unit = "raw"
    positions: PositionMode = "all"
    op: SettingOp = "add"
    mode: MultiLayerMode = "stack"
    threshold: float | None = None
    bound: Bound = "max"
    readout: str | None = None

    def __post_init__(self) -> None:
        layers = self.layers
        if isinstance(layers, int):
            layers = (layers,)
        object.__setattr__(self, "layers", tuple(sorted(set(layers))))
        object.__setattr__(self, "coef", float(self.coef))
        self._check_choices()
        self._check_layers()
        if self.is_baseline:
            return
        self._check_vector()
        if self.op == "add":
            self._check_strength()

    # ---- validation -----------------------------------------------------------------------
    def _check_choices(self) -> None:
        """Setting-level choices; the operator's own fields are checked by the one validation,
        :func:`~personavec.core.steering.check_operator` (the interventions are then built from
        checked fields)."""
        if self.unit not in UNITS:
            raise SteeringError(f"unknown unit {self.unit!r}; use raw or relative")
        if self.op not in SETTING_OPS:
            raise SteeringError(f"unknown operator {self.op!r}; use add, ablate or cap")
        check_operator(self.op, self.positions, self.coef, self.threshold, self.bound)
        if self.mode not in ("stack", "incremental"):
            raise SteeringError(f"unknown multi-layer mode {self.mode!r}; use stack or incremental")
        if self.mode == "incremental" and self.unit == "relative":
            raise SteeringError(
                "relative coefficients are not defined for incremental steering; pass --raw"
            )

    def _check_layers(self) -> None:
        if not self.layers:
            raise SteeringError("no layers given; pass at least one --layer")
        for layer in self.layers:
            check_layer(layer, self.vector.meta.n_layers)
        first, last = self.layers[0], self.layers[-1]
        if self.mode == "incremental" and self.layers != tuple(range(first, last + 1)):
            raise SteeringError(
                "incremental steering needs a contiguous range of layers, e.g. 8-16"
            )

    def _check_vector(self) -> None:
        for layer in self.layers:
            if float(self.vector.at(layer, self.readout).norm()) == 0.0:
                raise SteeringError(
                    f"the vector at layer {layer} is zero, so steering would do nothing; "
                    "pick another layer or re-extract the vector"
                )
            if self.unit == "relative" and self._typical(layer) == 0.0:
                raise SteeringError(
                    f"the vector's typical norm at layer {layer} is zero, so a relative "
                    "coefficient would do nothing; pass --raw or re-extract the vector"
                )

    def _typical(self, layer: int) -> float:
        norms = self.vector.typical_norm
        if norms is None:
            if self.unit == "relative":
                raise VectorFileError(
                    "this vector records no typical norms, so relative coefficients are "
                    "unavailable; pass --raw"
                )
            return 0.0
        return float(norms[layer])

    def _check_strength(self) -> None:
        """Refuse an added norm that is not finite or over :data:`MAX_NORM_RATIO` × the layer's
        scale: its typical residual norm, or, where the vector records none (or 0), the norm of
        the layer's own vector ``‖v_L‖`` (so ``|coef| ≤ MAX_NORM_RATIO`` raw)."""
        for item in self.interventions():
            added = abs(item.coef) * float(item.vector.norm())
            typical = self._typical(item.layer)
            if typical > 0:
                scale, what = typical, "the typical residual norm"
            else:
                scale = float(self.vector.at(item.layer, self.readout).norm())
                what = "the vector's own norm (the file records no typical norm there)"
            if not math.isfinite(added) or added > MAX_NORM_RATIO * scale:
                raise SteeringError(
                    f"coefficient {self.coef:g} ({self.unit}) adds a vector of norm {added:.3g} "
                    f"at layer {item.layer}, over {MAX_NORM_RATIO:g}× {what} {scale:.3g}; "
                    "pass a smaller --coef"
                )

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_vector(
        cls,
        vector: PersonaVector,
        layers: int | Iterable[int] | None = None,
        coef: float | None = None,
        unit: Unit | None = None,
        positions: str | None = None,
        op: str = "add",
        mode: str = "stack",
        threshold: float | str | None = None,
        *,
        bound: str = "max",
        readout: str | None = None,
    ) -> SteeringSetting:
        """A setting with omitted parts filled from ``vector``'s metadata.

        ``layers`` default to the recommended layer. For ``add``, an omitted ``coef`` is the
        recommended one, and then the unit and positions default to those it was calibrated in
        (``calibration["relative"]``, ``calibration["positions"]``); a ``unit`` other than the
        calibration's converts the recommended coefficient into it (:func:`convert_coef`: the
        added vector stays the same). An explicit ``coef`` defaults to unit ``raw`` and
        positions ``all``. ``ablate`` and ``cap`` need no coefficient; ``cap``
        needs ``threshold``: a raw projection, or ``"pNN"`` for the NN-th percentile of the
        extraction projections at the (single) layer.
        """
        meta = vector.meta
        if layers is None:
            layers = [vector.layer_or_recommended()]
        chosen = (int(layers),) if isinstance(layers, int) else tuple(layers)
        calibration = meta.calibration or {}
        if coef is None and op == "add":
            if meta.recommended_coef is None:
                raise SteeringError("the vector records no recommended coefficient; pass --coef")
            stored: Unit = "relative" if calibration.get("relative") else "raw"
            coef = float(meta.recommended_coef)
            if unit is not None and unit != stored:
                coef = convert_coef(vector, chosen, coef, stored, unit, readout)
            unit = unit or stored
            if positions is None:
                positions = str(calibration.get("positions", "all"))
        resolved = None if op != "cap" else _resolve_threshold(vector, chosen, threshold)
        if op != "cap" and threshold is not None:
            raise SteeringError("--threshold is for --op cap only")
        return cls(
            vector,
            chosen,
            1.0 if coef is None else float(coef),
            unit or "raw",
            (positions or "all"),  # type: ignore[arg-type]
            op,  # type: ignore[arg-type]
            mode,  # type: ignore[arg-type]
            resolved,
            bound,  # type: ignore[arg-type]
            readout,
        )

    def baseline(self) -> SteeringSetting:
        """The unsteered counterpart (``add`` with coefficient 0) at the same layers."""
        return replace(self, coef=0.0, op="add", mode="stack", threshold=None)

    # ---- use ------------------------------------------------------------------------------
    @property
    def is_baseline(self) -> bool:
        """``add`` with coefficient 0: nothing is changed."""
        return self.op == "add" and self.coef == 0

    def check_compatible(self, model: nn.Module, *, force: bool = False) -> None:
        """Raise unless the vector fits ``model`` (see :meth:`PersonaVector.check_compatible`)."""
        self.vector.check_compatible(model, force=force)

    def interventions(self) -> list[Intervention]:
        """The per-layer interventions (empty for the baseline); coefficients are raw."""
        if self.is_baseline:
            return []
        out: list[Intervention] = []
        for index, layer in enumerate(self.layers):
            v = self.vector.at(layer, self.readout)
            if self.op == "add" and self.mode == "incremental" and index > 0:
                v = v - self.vector.at(layer - 1, self.readout)
            scale = self.coef
            if self.unit == "relative":
                scale = self.coef * self.vector.relative_scale(layer, self.readout)
            out.append(self._intervention(layer, v.float(), scale))
        return out

    def _intervention(self, layer: int, vector: torch.Tensor, scale: float) -> Intervention:
        if self.op != "cap":
            return Intervention(layer, vector, scale, self.op, self.positions)
        return Intervention(
            layer, vector, 1.0, "cap", self.positions, threshold=self.threshold, bound=self.bound
        )

    def apply(self, model: nn.Module) -> SteeringHandle:
        """Start steering ``model``; the handle's ``remove()`` (or a ``with`` block) undoes it."""
        return apply_steering(model, self.interventions())

    def describe(self) -> str:
        """One line for people, e.g. ``steering 'evil' at layer 12 with relative coef 0.2 …``."""
        layers = format_layers(self.layers)
        trait = self.vector.meta.trait
        if self.is_baseline:
            return "unsteered"
        if self.op == "ablate":
            return f"ablating '{trait}' at layer {layers} ({self.positions} positions)"
        if self.op == "cap":
            side = "above" if self.bound == "max" else "below"
            return (
                f"capping '{trait}' at layer {layers} {side} projection {self.threshold:g} "
                f"({self.positions} positions)"
            )
        return (
            f"steering '{trait}' at layer {layers} with {self.unit} coef {self.coef:g} "
            f"({self.positions} positions, {self.mode})"
        )

    def label(self) -> str:
        """A short label for tables, e.g. ``L12 rel +0.2 (all)`` or ``baseline``."""
        if self.is_baseline:
            return "baseline"
        layers = ",".join(str(x) for x in self.layers)
        if self.op == "ablate":
            return f"L{layers} ablate ({self.positions})"
        if self.op == "cap":
            return f"L{layers} cap {self.bound} {self.threshold:g} ({self.positions})"
        unit = "rel" if self.unit == "relative" else "raw"
        return f"L{layers} {unit} {self.coef:+g} ({self.positions})"

    def identity(self) -> dict[str, Any]:
        """What changes the steered model, as JSON-able values (for run keys); ``{}`` for the
        baseline. Stable across processes; the vector enters as a hash of the rows used."""
        if self.is_baseline:
            return {}
        rows = hashlib.sha256()
        for layer in self.layers:
            rows.update(self.vector.at(layer, self.readout).numpy().tobytes())
            if self.unit == "relative":
                rows.update(str(self.vector.relative_scale(layer, self.readout)).encode())
        out: dict[str, Any] = {
            "vector": rows.hexdigest()[:16],
            "layers": list(self.layers),
            "coef": self.coef,
            "positions": self.positions,
            "relative": self.unit == "relative",
        }
        if self.op != "add":
            out.update(op=self.op, coef=None)
        if self.mode != "stack":
            out["mode"] = self.mode
        if self.op == "cap":
            out.update(threshold=self.threshold, bound=self.bound)
        if self.readout is not None:
            out["readout"] = self.readout
        return out


def apply_settings(model: nn.Module, settings: Sequence[SteeringSetting]) -> SteeringHandle:
    """Apply several settings at once (at a shared layer in order); returns one handle."""
    return apply_steering(model, [item for s in settings for item in s.interventions()])


def _resolve_threshold(
    vector: PersonaVector, layers: tuple[int, ...], threshold: float | str | None
) -> float:
    """A raw cap threshold: a number, or ``pNN`` resolved at the setting's single layer."""
    if threshold is None:
        raise SteeringError("the cap operator needs --threshold (a number, or pNN, e.g. p95)")
    parsed = float(threshold) if isinstance(threshold, int | float) else parse_threshold(threshold)
    if not isinstance(parsed, Percentile):
        return parsed
    if len(set(layers)) != 1:
        raise SteeringError("a percentile threshold needs exactly one layer; pass one --layer")
    return float(vector.projection_percentile(layers[0], parsed.q))


def parse_steer_spec(
    text: str,
    *,
    unit: Unit | None = None,
    op: str = "add",
    threshold: float | str | None = None,
    mode: str = "stack",
) -> SteeringSetting:
    """Load the vector named by ``FILE[:layer[:coef[:positions[:op]]]]`` and build its setting.

    Empty or missing parts fall back as in :meth:`SteeringSetting.from_vector`; ``op`` and
    ``threshold`` are defaults for specs that name no operator / threshold. For ``cap`` the coef
    part is the threshold (a number or ``pNN``). The spec is checked before the file is read.
    """
    parts = split_spec(text)
    chosen = parts.op or op
    coef = parse_coef(parts.value) if parts.value and chosen != "cap" else None
    if chosen == "cap":
        threshold = parts.value or threshold
    vector = PersonaVector.load(parts.path)
    return SteeringSetting.from_vector(
        vector,
        parts.layers,
        coef,
        unit,
        parts.positions,
        chosen,
        mode,
        threshold if chosen == "cap" else None,
    )


__all__ = [
    "MAX_NORM_RATIO",
    "SETTING_OPS",
    "SPEC_HELP",
    "UNITS",
    "SteeringSetting",
    "Unit",
    "apply_settings",
    "convert_coef",
    "parse_coef",
    "parse_layers",
    "parse_steer_spec",
    "unit_of",
]

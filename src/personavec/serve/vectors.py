"""The persona vectors a server holds, and how a request's extensions become hooks.

A request's ``steering`` items become :class:`~personavec.core.steering.Intervention` s through
:meth:`SteeringSetting.from_vector` (the one place calibrated defaults are filled in); its
``monitor`` and ``guard`` items become :class:`MonitorSpec` s and
:class:`ConditionalSteering` rules. Every problem is a 400 :class:`ApiError` naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from personavec.core.grammar import parse_layers
from personavec.core.setting import SteeringSetting
from personavec.core.steering import Intervention
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.monitor.specs import ConditionalSteering, MonitorSpec
from personavec.serve.schemas import ApiError, GuardItem, MonitorItem, SteeringItem


@dataclass
class RowReadout:
    """What one request reads and guards (the same for each of its choices).

    Attributes:
        specs: monitor specs, named ``vector@layer`` (unique across a batch).
        keys: spec name → the name the response uses (the vector's name, or ``vector@layer``
            when the request reads one vector at several layers).
        guards: steer-back rules (their specs are among ``specs``).
    """

    specs: list[MonitorSpec] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    guards: list[ConditionalSteering] = field(default_factory=list)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Response key → ``{"vector", "layer"}``."""
        return {
            self.keys[s.name]: {"vector": s.name.rsplit("@", 1)[0], "layer": s.layer}
            for s in self.specs
        }


class VectorRegistry:
    """Named persona vectors that fit the served model."""

    def __init__(self, vectors: dict[str, PersonaVector]) -> None:
        self.vectors = dict(sorted(vectors.items()))

    @classmethod
    def load_dir(cls, folder: Path | None, model: nn.Module) -> VectorRegistry:
        """Every ``*.safetensors`` in ``folder`` (name = file stem), checked against ``model``."""
        if folder is None:
            return cls({})
        vectors: dict[str, PersonaVector] = {}
        for path in sorted(Path(folder).glob("*.safetensors")):
            vector = PersonaVector.load(path)
            try:
                vector.check_compatible(model)
            except PersonavecError as exc:
                raise PersonavecError(f"{path.name}: {exc}") from None
            vectors[path.stem] = vector
        if not vectors:
            raise PersonavecError(f"no *.safetensors vectors in {folder}; extract one first")
        return cls(vectors)

    def info(self) -> list[dict[str, Any]]:
        """``/v1/vectors`` entries."""
        out = []
        for name, vector in self.vectors.items():
            meta = vector.meta
            layer = meta.recommended_layer
            calibration = None
            if meta.recommended_coef is not None:
                extra = meta.calibration or {}
                calibration = {
                    "coef": meta.recommended_coef,
                    "unit": "relative" if extra.get("relative") else "raw",
                    "positions": extra.get("positions", "all"),
                }
            norm = None
            if vector.typical_norm is not None and layer is not None:
                norm = float(vector.typical_norm[layer])
            out.append(
                {
                    "name": name,
                    "object": "persona_vector",
                    "trait": meta.trait,
                    "model": meta.model_id,
                    "layers": meta.n_layers,
                    "recommended_layer": layer,
                    "calibration": calibration,
                    "typical_norm": norm,
                }
            )
        return out

    def get(self, name: str, param: str) -> PersonaVector:
        if name not in self.vectors:
            known = ", ".join(self.vectors) or "none loaded; start the server with --vectors DIR"
            raise ApiError(400, f"unknown vector {name!r} (known: {known})", param=param)
        return self.vectors[name]

    def interventions(self, items: Sequence[SteeringItem]) -> list[Intervention]:
        """The request's steering, one :class:`SteeringSetting` per item, coefficients raw."""
        out: list[Intervention] = []
        for index, item in enumerate(items):
            param = f"steering.{index}"
            vector = self.get(item.vector, param)
            try:
                setting = SteeringSetting.from_vector(
                    vector,
                    self._layers(item.layer, vector),
                    item.coef,
                    item.unit,
                    item.positions,
                    item.op,
                    item.mode,
                    item.threshold if item.op == "cap" else None,
                    bound=item.bound,
                )
            except PersonavecError as exc:
                raise ApiError(400, f"{param}: {exc}", param=param) from None
            out.extend(setting.interventions())
        return out

    def readout(self, monitor: Sequence[MonitorItem], guard: Sequence[GuardItem]) -> RowReadout:
        """Specs for ``monitor`` and ``guard`` items, and the guards' steer-back rules."""
        readout = RowReadout()
        by_name: dict[str, MonitorSpec] = {}

        def spec_for(vector_name: str, layer: int | None, param: str) -> MonitorSpec:
            vector = self.get(vector_name, param)
            try:
                spec = MonitorSpec.from_vector(vector, layer, name=f"{vector_name}@?")
                name = f"{vector_name}@{spec.layer}"
                if name not in by_name:
                    by_name[name] = MonitorSpec(name, spec.layer, spec.vector)
            except PersonavecError as exc:
                raise ApiError(400, f"{param}: {exc}", param=param) from None
            return by_name[name]

        for index, item in enumerate(monitor):
            spec_for(item.vector, item.layer, f"monitor.{index}")
        for index, rule in enumerate(guard):
            param = f"guard.{index}"
            spec = spec_for(rule.vector, rule.layer, param)
            readout.guards.append(self._guard(rule, spec, param))
        readout.specs = list(by_name.values())
        vectors = [s.name.rsplit("@", 1)[0] for s in readout.specs]
        readout.keys = {
            s.name: (v if vectors.count(v) == 1 else s.name)
            for s, v in zip(readout.specs, vectors, strict=True)
        }
        return readout

    def _guard(self, rule: GuardItem, spec: MonitorSpec, param: str) -> ConditionalSteering:
        vector = self.vectors[rule.vector]
        try:
            cap = SteeringSetting.from_vector(
                vector, [spec.layer], op="cap", threshold=rule.threshold
            )
            coef = rule.coef
            if coef is None:
                calibrated = SteeringSetting.from_vector(vector, [spec.layer]).interventions()
                coef = abs(calibrated[0].coef) if calibrated else 1.0
            back = SteeringSetting.from_vector(vector, [spec.layer], -coef, "raw", "response")
            return ConditionalSteering(spec, float(cap.threshold or 0.0), coef, back.positions)
        except PersonavecError as exc:
            raise ApiError(400, f"{param}: {exc}", param=param) from None

    def _layers(
        self, layer: int | list[int] | str | None, vector: PersonaVector
    ) -> list[int] | None:
        if layer is None:
            return None
        if isinstance(layer, int):
            return [layer]
        if isinstance(layer, list):
            return list(layer)
        return parse_layers(layer, vector.meta.n_layers)

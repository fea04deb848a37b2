"""Answer prompts with a model, optionally steered: the library side of ``personavec generate``."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from personavec.core.models import LoadedModel, chat_messages
from personavec.core.positions import POSITION_MODES, PositionMode
from personavec.core.steering import OPERATORS, Intervention, MultiLayerMode, Operator, plan, steer
from personavec.core.vector import PersonaVector
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import SteeringError


@dataclass
class SteerRequest:
    """A persona vector plus how to apply it, validated against a loaded model."""

    vector: PersonaVector
    layers: list[int]
    coef: float
    positions: PositionMode
    op: Operator
    mode: MultiLayerMode
    relative: bool

    @classmethod
    def build(
        cls,
        vector: PersonaVector | str | Path,
        loaded: LoadedModel,
        *,
        layers: Sequence[int] | None = None,
        coef: float | None = None,
        positions: str | None = None,
        op: str = "add",
        mode: str = "stack",
        relative: bool | None = None,
        force: bool = False,
    ) -> SteerRequest:
        """Load/validate the vector; fill layer and coefficient from its metadata when omitted.

        ``relative=None`` means raw and ``positions=None`` means ``all``, except when the
        coefficient comes from the file's calibration, which records the unit it was swept in and
        the positions it was calibrated at.
        """
        pv = vector if isinstance(vector, PersonaVector) else PersonaVector.load(vector)
        pv.check_compatible(loaded.model, force=force)
        calibration = pv.meta.calibration or {}
        from_file = coef is None and op != "ablate" and pv.meta.recommended_coef is not None
        if positions is None:
            positions = str(calibration.get("positions", "all")) if from_file else "all"
        if positions not in POSITION_MODES:
            raise SteeringError(f"unknown positions {positions!r}; use {', '.join(POSITION_MODES)}")
        if op not in OPERATORS:
            raise SteeringError(f"unknown operator {op!r}; use add or ablate")
        if mode not in ("stack", "incremental"):
            raise SteeringError(f"unknown multi-layer mode {mode!r}; use stack or incremental")
        if layers is None:
            if pv.meta.recommended_layer is None:
                raise SteeringError("the vector records no recommended layer; pass --layer")
            layers = [pv.meta.recommended_layer]
        if coef is None:
            if op == "ablate":
                coef = 1.0
            elif pv.meta.recommended_coef is None:
                raise SteeringError("the vector records no recommended coefficient; pass --coef")
            else:
                coef = pv.meta.recommended_coef
                if relative is None:  # the calibrated coefficient is in the unit it was swept in
                    relative = bool(calibration.get("relative", False))
        request = cls(pv, list(layers), float(coef), positions, op, mode, bool(relative))  # type: ignore[arg-type]
        request.interventions()  # validate layers and coefficient now, not mid-generation
        return request

    def interventions(self) -> list[Intervention]:
        return plan(
            self.vector,
            self.layers,
            self.coef,
            op=self.op,
            positions=self.positions,
            mode=self.mode,
            relative=self.relative,
        )

    def describe(self) -> str:
        layers = ",".join(str(x) for x in self.layers)
        kind = "relative" if self.relative else "raw"
        if self.op == "ablate":
            return f"ablating '{self.vector.meta.trait}' at layer {layers} ({self.positions})"
        return (
            f"steering '{self.vector.meta.trait}' at layer {layers} with {kind} coef "
            f"{self.coef:g} ({self.positions} positions, {self.mode})"
        )


def generate_answers(
    loaded: LoadedModel,
    prompts: Sequence[str],
    config: SamplingConfig,
    *,
    system: str | None = None,
    steering: SteerRequest | None = None,
) -> list[str]:
    """One answer per prompt (the first sample), steered when ``steering`` is given."""
    requests = [GenerationRequest(chat_messages(p, system=system)) for p in prompts]
    engine = HFEngine(loaded)
    context = (
        steer(loaded.model, steering.interventions())
        if steering is not None
        else contextlib.nullcontext()
    )
    with context:
        generations = engine.generate(requests, config)
    return [g.response_text.strip() for g in generations if g.sample_index == 0]

"""Changes to a finetune, from command-line specs: preventative steering, ablation during
training, a projection penalty (``personavec finetune --prevent / --ablate-during-training /
--projection-penalty``).

Spec strings (``FILE`` a persona-vector file; a missing part falls back to the file's
recommended layer / coefficient)::

    --prevent FILE[:layer[:coef]]          layer: 12, 8-16, 8,12 or all (= 1..n)
    --ablate-during-training FILE[:layer]
    --projection-penalty FILE:layer:lambda

With several layers, ``mode="incremental"`` adds ``v_L − v_{L−1}`` at each (the paper's
multi-layer form; raw coefficients only) and ``stack`` each layer's own vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personavec.core.grammar import parse_coef, split_spec
from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting, unit_of
from personavec.core.steering import Intervention
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.training.finetune_config import TrainerExtras
from personavec.training.prevention import TrainingSteering
from personavec.training.projection_penalty import PenaltyTerm, penalty_trainer_class


@dataclass(frozen=True)
class ParsedSpec:
    """A parsed training spec; ``None`` parts come from the vector file."""

    path: Path
    layers: list[int] | None
    all_layers: bool
    value: float | None


def parse_training_spec(text: str, flag: str, *, max_parts: int) -> ParsedSpec:
    """Parse ``FILE[:layer[:value]]`` (``layer`` may be ``all``); at most ``max_parts`` parts
    after the file."""
    parts = [p.strip() for p in text.strip().split(":")]
    if len(parts) - 1 > max_parts:
        raise PersonavecError(f"{flag} {text!r} has too many ':' parts")
    all_layers = len(parts) > 1 and parts[1] == "all"
    if all_layers:
        parts[1] = ""
    spec = split_spec(":".join(parts))
    return ParsedSpec(
        spec.path, spec.layers, all_layers, parse_coef(spec.value) if spec.value else None
    )


def _setting(
    spec: ParsedSpec, loaded: LoadedModel, force: bool, n_layers: int, **kwargs: Any
) -> SteeringSetting:
    """The spec's setting (``all`` → layers 1..n), checked against ``loaded``."""
    if not spec.path.is_file():
        raise PersonavecError(f"vector file not found: {spec.path}")
    vector = PersonaVector.load(spec.path)
    vector.check_compatible(loaded.model, force=force)
    layers = list(range(1, n_layers + 1)) if spec.all_layers else spec.layers
    return SteeringSetting.from_vector(vector, layers, **kwargs)


@dataclass
class TrainingModifiers:
    """What changes in a finetune, validated against the base model.

    Attributes:
        prevent: preventative-steering requests (``add``); ablate: ablation requests.
        penalties: projection-penalty terms.
    """

    prevent: list[SteeringSetting] = field(default_factory=list)
    ablate: list[SteeringSetting] = field(default_factory=list)
    penalties: list[PenaltyTerm] = field(default_factory=list)
    penalty_ids: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.prevent or self.ablate or self.penalties)

    def interventions(self) -> list[Intervention]:
        return [i for r in [*self.prevent, *self.ablate] for i in r.interventions()]

    def identity(self) -> dict[str, Any]:
        """JSON-able description (recorded in the finetune record; {} when empty)."""
        if self.empty:
            return {}

        def steering(r: SteeringSetting) -> dict[str, Any]:
            return {"trait": r.vector.meta.trait, "op": r.op, "mode": r.mode, **r.identity()}

        return {
            "prevent": [steering(r) for r in self.prevent],
            "ablate": [steering(r) for r in self.ablate],
            "projection_penalty": self.penalty_ids,
        }

    def describe(self) -> str:
        parts = [r.describe() for r in [*self.prevent, *self.ablate]]
        parts += [
            f"projection penalty on '{p.trait}' at layer {p.layer}, λ {p.weight:g}"
            for p in self.penalties
        ]
        return "; ".join(parts) or "plain finetune"

    def extras(self) -> TrainerExtras:
        """What :func:`personavec.training.finetune.finetune` takes as ``extras``."""
        callbacks: list[Any] = []
        if self.prevent or self.ablate:
            callbacks.append(TrainingSteering(self.interventions()))
        args = {} if self.empty else {"activation_checkpointing": False}
        return TrainerExtras(
            callbacks=tuple(callbacks),
            trainer_class=penalty_trainer_class(self.penalties) if self.penalties else None,
            args=args,
            identity=self.identity(),
        )


def build_modifiers(
    loaded: LoadedModel,
    *,
    prevent: Sequence[str] = (),
    ablate: Sequence[str] = (),
    penalty: Sequence[str] = (),
    mode: str = "stack",
    positions: str = "all",
    relative: bool | None = None,
    force: bool = False,
) -> TrainingModifiers:
    """Parse and validate the specs against ``loaded`` (module docstring); raises
    :class:`PersonavecError` on bad or contradictory input before anything is written."""
    _check_flags(prevent, ablate, penalty, mode)
    n = _n_layers(loaded)
    out = TrainingModifiers()
    for text in prevent:
        spec = parse_training_spec(text, "--prevent", max_parts=2)
        if mode == "incremental" and not (spec.all_layers or len(spec.layers or []) > 1):
            raise PersonavecError(
                f"--mode incremental needs several layers (e.g. {spec.path}:all:2); got {text!r}"
            )
        out.prevent.append(
            _setting(
                spec,
                loaded,
                force,
                n,
                coef=spec.value,
                unit=unit_of(relative),
                positions=positions,
                mode=mode,
            )
        )
    for text in ablate:
        spec = parse_training_spec(text, "--ablate-during-training", max_parts=1)
        out.ablate.append(_setting(spec, loaded, force, n, positions=positions, op="ablate"))
    for text in penalty:
        out.penalties.append(_penalty_term(text, loaded, force, out.penalty_ids))
    _check_traits(out)
    return out


def _n_layers(loaded: LoadedModel) -> int:
    from personavec.core.layers import find_blocks

    return len(find_blocks(loaded.model))


def _check_flags(
    prevent: Sequence[str], ablate: Sequence[str], penalty: Sequence[str], mode: str
) -> None:
    if mode not in ("stack", "incremental"):
        raise PersonavecError(f"unknown --mode {mode!r}; use stack or incremental")
    if mode == "incremental" and not prevent:
        raise PersonavecError(
            "--mode incremental applies to --prevent; pass --prevent FILE:all:COEF"
        )


def _penalty_term(
    text: str, loaded: LoadedModel, force: bool, ids: list[dict[str, Any]]
) -> PenaltyTerm:
    parts = text.strip().split(":")
    if len(parts) != 3 or not parts[2].strip():
        raise PersonavecError(f"--projection-penalty {text!r}: write FILE:layer:lambda")
    weight = parse_coef(parts[2])
    spec = parse_training_spec(":".join(parts[:2]), "--projection-penalty", max_parts=1)
    setting = _setting(spec, loaded, force, _n_layers(loaded), op="ablate")
    if len(setting.layers) != 1:
        raise PersonavecError(f"--projection-penalty {text!r}: give one layer")
    layer = setting.layers[0]
    ids.append({"trait": setting.vector.meta.trait, **setting.identity(), "lambda": weight})
    return PenaltyTerm(
        setting.vector.direction(layer).float(), layer, weight, setting.vector.meta.trait
    )


def _check_traits(out: TrainingModifiers) -> None:
    steered = {(r.vector.meta.trait, layer) for r in out.prevent for layer in r.layers}
    ablated = {(r.vector.meta.trait, layer) for r in out.ablate for layer in r.layers}
    both = steered & ablated
    if both:
        trait, layer = sorted(both)[0]
        raise PersonavecError(
            f"--prevent and --ablate-during-training both act on '{trait}' at layer {layer}; "
            "pick one"
        )

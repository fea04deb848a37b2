"""Finetuning shift along persona vectors (``personavec shift``).

For a vector ``v`` of trait ``T`` at layer ``L``::

    shift_L = ( mean_q h_ft(q) − mean_q h_base(q) ) · v_L / ‖v_L‖

where ``h(q)`` is the layer-``L`` activation of the last prompt token of evaluation question
``q`` (the trait's held-out ``evaluation_questions``, rendered as a one-turn chat), i.e. the
``prompt_last`` readout. Units: residual-stream units (as projections). The report also gives the
shift at every layer 0..n, each projected on that layer's own unit vector. A shift or projection
that is not finite (a finetune whose weights or activations overflowed) is refused, never
reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from personavec.core.capture import Example, capture
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.traits.library import load_trait


@dataclass
class VectorShift:
    """The shift along one vector.

    Attributes:
        trait: the vector's trait; layer: the layer reported as *the* shift.
        shift: projection of the mean activation difference at ``layer``.
        base_projection / finetuned_projection: mean last-prompt-token projections at ``layer``.
        per_layer: shift at every layer ``0..n`` (index = layer).
        n_prompts: evaluation prompts averaged over.
    """

    trait: str
    layer: int
    shift: float
    base_projection: float
    finetuned_projection: float
    per_layer: list[float]
    n_prompts: int
    source: str | None = None


@dataclass
class ShiftReport:
    """Shifts along several vectors between one base and one finetuned model."""

    base: str
    finetuned: str
    shifts: list[VectorShift] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def mean_prompt_last(
    loaded: LoadedModel, questions: Sequence[str], *, batch_size: int = 16
) -> torch.Tensor:
    """Mean last-prompt-token activation over one-turn chats, float32 ``[n_layers + 1, hidden]``."""
    if not questions:
        raise PersonavecError("no prompts to measure the shift on; pass some questions")
    examples = [Example(chat_messages(q)) for q in questions]
    result = capture(loaded, examples, readouts=("prompt_last",), batch_size=batch_size)
    return result.means["prompt_last"]["all"]


def project_per_layer(diff: torch.Tensor, vector: torch.Tensor) -> list[float]:
    """``diff[L] · vector[L] / ‖vector[L]‖`` per layer (0.0 where the vector is zero)."""
    norms = vector.norm(dim=-1)
    dots = (diff.double() * vector.double()).sum(-1)
    out = torch.where(norms > 0, dots / norms.double().clamp_min(1e-30), torch.zeros_like(dots))
    return [float(x) for x in out]


def vector_layer(vector: PersonaVector, layer: int | None) -> int:
    """The layer to report: ``layer`` when given, else the vector's recommended layer."""
    return vector.layer_or_recommended(layer)


def finetuning_shift(
    base: LoadedModel,
    finetuned: LoadedModel,
    vectors: Sequence[PersonaVector],
    *,
    layers: Sequence[int | None] | None = None,
    questions: Mapping[str, Sequence[str]] | None = None,
    n_questions: int | None = None,
    base_means: dict[str, torch.Tensor] | None = None,
) -> ShiftReport:
    """The finetuning shift of ``finetuned`` against ``base`` along each vector.

    Args:
        vectors: persona vectors of ``base`` (checked against both models).
        layers: per vector, the layer to report (None: its recommended layer).
        questions: trait → prompts; default each trait's evaluation questions.
        n_questions: use only the first N (>= 1) questions of each trait; None: all.
        base_means: trait → cached :func:`mean_prompt_last` of ``base`` (filled in when given).

    Raises:
        PersonavecError: bad input, or a result that is not finite.
    """
    if n_questions is not None and n_questions < 1:
        raise PersonavecError(
            f"--questions must be at least 1, got {n_questions}; omit it to use every question"
        )
    chosen = list(layers) if layers is not None else [None] * len(vectors)
    if len(chosen) != len(vectors):
        raise PersonavecError(f"got {len(chosen)} layers for {len(vectors)} vectors")
    for vector in vectors:
        vector.check_compatible(base.model)
        vector.check_compatible(finetuned.model)
    cache = base_means if base_means is not None else {}
    report = ShiftReport(base.spec, finetuned.spec)
    ft_means: dict[str, torch.Tensor] = {}
    for vector, layer in zip(vectors, chosen, strict=True):
        trait = vector.meta.trait
        prompts = _prompts(trait, questions, n_questions)
        if trait not in cache:
            cache[trait] = mean_prompt_last(base, prompts)
        if trait not in ft_means:
            ft_means[trait] = mean_prompt_last(finetuned, prompts)
        at = vector_layer(vector, layer)
        rows = vector.readout()
        per_layer = project_per_layer(ft_means[trait] - cache[trait], rows)
        unit = vector.direction(at)
        report.shifts.append(
            VectorShift(
                trait=trait,
                layer=at,
                shift=per_layer[at],
                base_projection=float(cache[trait][at] @ unit),
                finetuned_projection=float(ft_means[trait][at] @ unit),
                per_layer=per_layer,
                n_prompts=len(prompts),
                source=str(vector.path) if vector.path else None,
            )
        )
        _check_finite(report.shifts[-1], finetuned.spec)
    return report


def _check_finite(shift: VectorShift, finetuned: str) -> None:
    values = (shift.shift, shift.base_projection, shift.finetuned_projection, *shift.per_layer)
    if not all(math.isfinite(x) for x in values):
        raise PersonavecError(
            f"the shift of {finetuned} along '{shift.trait}' at layer {shift.layer} is not "
            f"finite ({shift.shift}); its weights or activations overflowed — retrain it with a "
            "lower learning rate"
        )


def is_shift_report(path: Path) -> bool:
    """Whether ``path`` is a JSON shift report (what ``personavec shift`` may replace)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and {"base", "finetuned", "shifts"} <= data.keys()


def _prompts(trait: str, questions: Mapping[str, Sequence[str]] | None, n: int | None) -> list[str]:
    if questions is not None and trait in questions:
        prompts = list(questions[trait])
    else:
        prompts = list(load_trait(trait).evaluation_questions)
    return prompts[:n] if n else prompts

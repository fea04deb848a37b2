"""Steering: change the residual stream at chosen layers and token positions.

Operators (at layer ``L``, on the selected positions only; ``v̂ = v / ‖v‖``):

* ``add``:    ``h ← h + coef · v``
* ``ablate``: ``h ← h − (h · v̂) v̂``  (``coef`` is ignored)
* ``cap``:    ``p = h · v̂``; bound ``max``: if ``p > τ`` then ``h ← h − (p − τ) v̂``; bound ``min``:
  if ``p < τ`` then ``h ← h + (τ − p) v̂`` (``τ = threshold`` in hidden-state units; ``coef`` is
  ignored). Positions within the bound are left bit-identical.
* ``guard``:  a gate plus an operator: where ``h · v̂ > τ`` (:func:`gate`), ``add``
  (``h ← h + coef · v``; a steer-back has ``coef < 0``); elsewhere bit-identical.

An operator is one function ``op(hidden, mask, item) -> hidden`` (:data:`OperatorFn`) in
:data:`OPERATOR_FUNCTIONS`; :func:`check_operator` is the one validation of an operator's fields
(used by :class:`Intervention` and :class:`~personavec.core.setting.SteeringSetting`), and
:func:`non_finite_error` the one non-finite error. Hooks come from the one runtime,
:mod:`personavec.core.hooks`, which tracks positions per sequence, so a left-padded batch under
cached decoding is steered exactly like each request alone; prompt lengths of teacher-forced
passes are given explicitly, to one handle (:meth:`SteeringHandle.teacher_forcing`) or to every
hook on a model (:func:`teacher_forcing`).

Use :func:`steer` (context manager) or :func:`apply_steering` (returns a handle to ``remove()``).
On exit the model is exactly as before: hooks are removed even when the body raises. When a
steered layer's output becomes non-finite (NaN or inf, e.g. from an absurd coefficient), the
forward pass stops with :class:`~personavec.errors.SteeringError` instead of producing garbage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from personavec.core.hooks import (
    ForwardCall,
    HookHandle,
    LayerHook,
    PromptLengths,
    install_hooks,
    teacher_forcing,
)
from personavec.core.layers import check_layer, find_blocks
from personavec.core.positions import POSITION_MODES, PositionMode
from personavec.errors import SteeringError

__all__ = [
    "BOUNDS",
    "OPERATORS",
    "OPERATOR_FUNCTIONS",
    "Intervention",
    "OperatorFn",
    "SteeringHandle",
    "apply_steering",
    "check_operator",
    "gate",
    "non_finite_error",
    "prepare_intervention",
    "steer",
    "teacher_forcing",
]

Operator = Literal["add", "ablate", "cap", "guard"]
OPERATORS: tuple[str, ...] = get_args(Operator)
Bound = Literal["max", "min"]
BOUNDS: tuple[str, ...] = get_args(Bound)
MultiLayerMode = Literal["stack", "incremental"]


class NonFiniteSteering(SteeringError):
    """Steered activations became NaN or infinite during a forward pass."""


THRESHOLD_OPS = ("cap", "guard")
"""Operators that take a ``threshold`` (``τ`` on the projection ``h · v̂``)."""


def check_operator(
    op: str,
    positions: str,
    coef: float,
    threshold: float | None,
    bound: str = "max",
) -> None:
    """The one validation of an operator's fields (one-line :class:`SteeringError`).

    ``op`` in :data:`OPERATORS`, ``positions`` a position mode, ``coef`` finite; ``cap`` and
    ``guard`` need a finite ``threshold`` (others refuse one); ``bound`` ``max`` or ``min``.
    """
    if op not in OPERATORS:
        raise SteeringError(f"unknown operator {op!r}; use {', '.join(OPERATORS)}")
    if positions not in POSITION_MODES:
        raise SteeringError(f"unknown positions {positions!r}; use {', '.join(POSITION_MODES)}")
    if not math.isfinite(coef):
        raise SteeringError(f"coefficient {coef!r} is not a finite number; pass one")
    if bound not in BOUNDS:
        raise SteeringError(f"unknown cap bound {bound!r}; use max or min")
    if op in THRESHOLD_OPS:
        if threshold is None or not math.isfinite(threshold):
            raise SteeringError(
                f"{op} needs a finite --threshold (a number or pNN), got {threshold!r}"
            )
    elif threshold is not None:
        raise SteeringError(f"--threshold is for --op cap only, not {op}")


@dataclass(frozen=True)
class Intervention:
    """One change at one layer.

    Attributes:
        layer: layer under the block-output convention (0 = embeddings, L = output of block L).
        vector: ``[hidden]``; added as ``coef · vector`` (``add``) or used as a direction
            (``ablate``, ``cap``).
        coef: multiplier for ``add`` and ``guard``; ignored by ``ablate`` and ``cap``.
        op: ``"add"``, ``"ablate"``, ``"cap"`` or ``"guard"``.
        positions: ``"all"``, ``"prompt"`` or ``"response"``.
        threshold: ``cap`` and ``guard``: ``τ`` on the projection ``h · v̂`` (hidden units).
        bound: ``cap`` only: ``"max"`` caps projections above ``τ``, ``"min"`` lifts those below.
        rows: batch rows it applies to (``None``: every row); other rows are left untouched,
            so requests with different settings can share one batch.
    """

    layer: int
    vector: torch.Tensor
    coef: float = 1.0
    op: Operator = "add"
    positions: PositionMode = "all"
    threshold: float | None = None
    bound: Bound = "max"
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.rows is not None and any(r < 0 for r in self.rows):
            raise SteeringError(f"batch rows must be >= 0, got {self.rows}")
        check_operator(self.op, self.positions, self.coef, self.threshold, self.bound)
        if self.vector.ndim != 1:
            shape = tuple(self.vector.shape)
            raise SteeringError(f"steering vector must be 1-D [hidden], got {shape}")
        if not torch.isfinite(self.vector).all():
            raise SteeringError("steering vector contains NaN or inf; check the vector file")
        # A guard of coefficient 0 never changes anything (its prepared ``coef · v`` is zero).
        inert = self.op == "add" or (self.op == "guard" and self.coef == 0)
        if not inert and float(self.vector.norm()) == 0.0:
            raise SteeringError(f"cannot {self.op} along a zero vector at layer {self.layer}")


OperatorFn = Callable[[torch.Tensor, torch.Tensor, Intervention], torch.Tensor]
"""``op(hidden [b, s, h], mask bool [b, s], item) -> hidden``. ``item`` is prepared for the
model (:func:`prepare_intervention`): for ``add`` and ``guard`` its vector is ``coef · v`` in
the model's dtype, otherwise the float32 unit vector ``v̂``; both on the model's device.
Positions where ``mask`` is False must stay as they are."""


def add(hidden: torch.Tensor, mask: torch.Tensor, item: Intervention) -> torch.Tensor:
    """``h ← h + coef · v`` at the masked positions (``item.vector`` already holds ``coef · v``)."""
    return hidden + mask.unsqueeze(-1).to(hidden.dtype) * item.vector


def ablate(hidden: torch.Tensor, mask: torch.Tensor, item: Intervention) -> torch.Tensor:
    """``h ← h − (h · v̂) v̂`` at the masked positions (``item.vector`` is ``v̂``, float32)."""
    unit = item.vector
    component = (hidden.float() @ unit).unsqueeze(-1)
    return hidden - (mask.unsqueeze(-1).float() * component * unit).to(hidden.dtype)


def cap(hidden: torch.Tensor, mask: torch.Tensor, item: Intervention) -> torch.Tensor:
    """Clamp ``p = h · v̂`` to ``≤ τ`` (bound ``max``) or ``≥ τ`` (``min``) at the masked
    positions by moving ``h`` along ``v̂`` only (``item.vector`` is ``v̂``, float32)."""
    unit = item.vector
    threshold = float(item.threshold)  # type: ignore[arg-type]  # validated for cap
    over = hidden.float() @ unit - threshold  # [b, s]
    excess = over.clamp(min=0.0) if item.bound == "max" else over.clamp(max=0.0)
    return hidden - ((mask.float() * excess).unsqueeze(-1) * unit).to(hidden.dtype)


def gate(projection: torch.Tensor, mask: torch.Tensor, item: Intervention) -> torch.Tensor:
    """Where a ``guard`` fires: bool ``[b, s]``, the masked positions whose projection
    ``h · v̂`` (float ``[b, s]``, hidden units) is strictly above ``item.threshold``."""
    return mask & (projection > float(item.threshold))  # type: ignore[arg-type]  # validated


def guard(hidden: torch.Tensor, mask: torch.Tensor, item: Intervention) -> torch.Tensor:
    """``add`` (``item.vector`` holds ``coef · v``) where :func:`gate` fires, measured on
    ``hidden`` along ``v̂`` (the sign of ``coef`` undone); elsewhere ``hidden`` as it is."""
    if item.coef == 0:
        return hidden
    direction = item.vector.float() * (1.0 if item.coef > 0 else -1.0)
    projection = hidden.float() @ (direction / direction.norm())
    return guarded(hidden, gate(projection, mask, item), item)


def guarded(hidden: torch.Tensor, fire: torch.Tensor, item: Intervention) -> torch.Tensor:
    """``hidden + coef · v`` where ``fire`` (bool ``[b, s]``), bit-identical elsewhere."""
    return torch.where(fire.unsqueeze(-1), hidden + item.vector, hidden)


OPERATOR_FUNCTIONS: dict[str, OperatorFn] = {
    "add": add,
    "ablate": ablate,
    "cap": cap,
    "guard": guard,
}


def non_finite_error(items: Sequence[Intervention]) -> NonFiniteSteering:
    """The one error for steered activations that became NaN or inf under ``items``."""
    layers = ", ".join(str(i.layer) for i in items)
    coefs = ", ".join(f"{i.coef:g}" for i in items if i.op in ("add", "guard"))
    hint = f" (coefficients {coefs})" if coefs else ""
    return NonFiniteSteering(
        f"steering at layer(s) {layers} made the activations NaN or inf{hint}; "
        "use a smaller coefficient"
    )


class SteeringHandle:
    """Active steering on a model; call :meth:`remove` (or leave the ``with`` block) to undo."""

    def __init__(
        self,
        model: nn.Module,
        interventions: Sequence[Intervention],
        blocks_path: str | None,
        *,
        check_finite: bool = True,
    ) -> None:
        self.model = model
        self.interventions = list(interventions)
        blocks = find_blocks(model, blocks_path)
        by_layer: dict[int, list[Intervention]] = {}
        for item in self.interventions:
            check_layer(item.layer, len(blocks))
            by_layer.setdefault(item.layer, []).append(prepare_intervention(item, blocks))
        self._finite: torch.Tensor | None = None
        deepest = max(by_layer, default=0)
        hooks = {
            layer: [self._layer_hook(items, check=layer == deepest, track=check_finite)]
            for layer, items in by_layer.items()
        }
        self._hooks: HookHandle = install_hooks(
            model, hooks, blocks_path=blocks_path, on_start=self._new_call
        )

    def _new_call(self, call: ForwardCall | None) -> None:
        self._finite = None

    def _layer_hook(self, items: Sequence[Intervention], *, check: bool, track: bool) -> LayerHook:
        def hook(hidden: torch.Tensor, call: ForwardCall) -> torch.Tensor:
            for item in items:
                mask = call.rows_mask(item.positions, item.rows)
                hidden = OPERATOR_FUNCTIONS[item.op](hidden, mask, item)
            if not track:
                return hidden
            # One device-side flag per call, read once at the deepest steered layer.
            finite = torch.isfinite(hidden).all()
            self._finite = finite if self._finite is None else self._finite & finite
            if check:
                ok, self._finite = bool(self._finite), None
                if not ok:
                    raise non_finite_error(self.interventions)
            return hidden

        return hook

    def teacher_forcing(
        self, prompt_lengths: PromptLengths
    ) -> contextlib.AbstractContextManager[None]:
        """Steer teacher-forced passes: prefill calls split each row at ``prompt_lengths[b]``
        real tokens (see :meth:`personavec.core.hooks.HookHandle.teacher_forcing`)."""
        return self._hooks.teacher_forcing(prompt_lengths)

    def remove(self) -> None:
        """Remove every hook; safe to call twice."""
        self._hooks.remove()
        self._finite = None

    @property
    def active(self) -> bool:
        return self._hooks.active

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def prepare_intervention(item: Intervention, blocks: nn.ModuleList) -> Intervention:
    """``item`` with its vector ready for the hook: on the model's device; ``coef · v`` in the
    model's dtype for ``add`` and ``guard``, the float32 unit vector otherwise."""
    param = next(blocks.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    vector = item.vector.detach().to(device=device, dtype=torch.float32)
    if item.op in ("add", "guard"):
        vector = (vector * item.coef).to(dtype)
        if not torch.isfinite(vector).all():
            raise SteeringError(
                f"coefficient {item.coef:g} times the vector at layer {item.layer} overflows "
                f"{str(dtype).removeprefix('torch.')}; use a smaller coefficient"
            )
    else:
        vector = vector / vector.norm()
    return dataclasses.replace(item, vector=vector)


def apply_steering(
    model: nn.Module,
    interventions: Sequence[Intervention] | Intervention,
    *,
    blocks_path: str | None = None,
    check_finite: bool = True,
) -> SteeringHandle:
    """Start steering ``model``; returns a handle whose ``remove()`` undoes it.

    With ``check_finite`` (the default) a forward pass whose steered activations are not finite
    raises :func:`non_finite_error`; a caller that checks each row itself (the server) passes
    False.
    """
    items = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    return SteeringHandle(model, items, blocks_path, check_finite=check_finite)


@contextlib.contextmanager
def steer(
    model: nn.Module,
    interventions: Sequence[Intervention] | Intervention,
    *,
    blocks_path: str | None = None,
) -> Iterator[SteeringHandle]:
    """Context manager form of :func:`apply_steering`."""
    handle = apply_steering(model, interventions, blocks_path=blocks_path)
    try:
        yield handle
    finally:
        handle.remove()

"""The hooks of one batch membership: every row's steering, readings and guards.

:class:`BatchHooks` is installed when a set of rows starts decoding together and removed when the
set changes (a row joins or leaves), so the decoding steps in between reuse it: the decoder blocks
are looked up, the vectors moved to the device and the hooks registered once per membership, not
once per step.

Steering runs each row's interventions (``rows=(i,)``) through
:func:`personavec.core.steering.apply_steering` without its batch-wide finiteness check;
readings and guards come from one :class:`TokenMonitor` over the union of the rows' monitored
vectors. Finiteness is checked per row instead (:class:`FiniteRows`, at the last layer, after
every change): a row whose residual became NaN or inf, or so large that its squared norm
overflows (the model's norm layers would turn it into zeros or NaN), fails alone, while the
other rows of the same forward pass are untouched (rows never mix in a forward pass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from personavec.core.hooks import ForwardCall, install_hooks
from personavec.core.layers import find_blocks
from personavec.core.steering import SteeringHandle, apply_steering
from personavec.monitor.monitor import ConditionalSteering, MonitorSpec, TokenMonitor
from personavec.monitor.specs import Reading
from personavec.serve.jobs import Job


class FiniteRows:
    """After each forward call, :attr:`rows` is bool ``[batch]``: the row's residual at the last
    layer is finite at every real token, squared norm included (read after the other hooks)."""

    def __init__(self, model: nn.Module) -> None:
        self.rows: torch.Tensor | None = None
        last = len(find_blocks(model))
        self._handle = install_hooks(model, {last: [self._check]}, on_start=self._reset)

    def _reset(self, call: ForwardCall | None) -> None:
        self.rows = None

    def _check(self, hidden: torch.Tensor, call: ForwardCall) -> None:
        energy = hidden.float().square().sum(dim=-1)  # [b, s]
        self.rows = (torch.isfinite(energy) | ~call.real).all(dim=-1)

    def remove(self) -> None:
        self._handle.remove()


class BatchHooks:
    """Hooks for the jobs of ``jobs`` decoded as batch rows ``0..len(jobs)-1``, in that order.

    Attributes:
        jobs: the rows' jobs (identity decides whether a later step may reuse these hooks).
    """

    def __init__(self, model: nn.Module, jobs: Sequence[Job]) -> None:
        self.jobs = list(jobs)
        interventions = [
            dataclasses.replace(item, rows=(index,))
            for index, job in enumerate(jobs)
            for item in job.interventions
        ]
        specs: dict[str, MonitorSpec] = {}
        guards: list[ConditionalSteering] = []
        for index, job in enumerate(jobs):
            for spec in job.readout.specs:
                specs.setdefault(spec.name, spec)
            guards += [
                dataclasses.replace(g, spec=specs[g.spec.name], rows=(index,))
                for g in job.readout.guards
            ]
        self._steering: SteeringHandle | None = (
            apply_steering(model, interventions, check_finite=False) if interventions else None
        )
        self._monitor: TokenMonitor | None = None
        self._finite: FiniteRows | None = None
        try:
            if specs:
                self._monitor = TokenMonitor(
                    model,
                    list(specs.values()),
                    conditional=guards,
                    stop_ids=(),
                    raise_non_finite=False,  # FiniteRows checks each row
                )
            self._finite = FiniteRows(model)  # installed last: it sees every change
        except BaseException:
            self.remove()
            raise
        self._taken = [0] * len(jobs)  # readings of each row already handed out

    def serves(self, jobs: Sequence[Job]) -> bool:
        """True when ``jobs`` are exactly this membership's jobs, in the same order."""
        return len(jobs) == len(self.jobs) and all(
            a is b for a, b in zip(jobs, self.jobs, strict=True)
        )

    def finite(self, logits: torch.Tensor) -> list[bool]:
        """Per row of the latest forward call: its residual (see :class:`FiniteRows`) and its
        ``logits`` ``[batch, vocab]`` are finite."""
        ok = torch.isfinite(logits).all(dim=-1)
        if self._finite is not None and self._finite.rows is not None:
            ok = ok & self._finite.rows.to(ok.device)
        return [bool(x) for x in ok.tolist()]

    def take(self, row: int) -> tuple[list[Reading], list[int]]:
        """Row ``row``'s readings since the last call, and every position a guard changed."""
        if self._monitor is None or row >= len(self._monitor.readings):
            return [], []
        readings = self._monitor.readings[row]
        new, self._taken[row] = readings[self._taken[row] :], len(readings)
        return new, self._monitor.steered[row]

    def remove(self) -> None:
        """Remove every hook; safe to call twice."""
        if self._steering is not None:
            self._steering.remove()
        if self._monitor is not None:
            self._monitor.remove()
        if self._finite is not None:
            self._finite.remove()

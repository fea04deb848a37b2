"""Live monitoring: per-token projections onto persona vectors during any forward or ``generate``.

A :class:`TokenMonitor` records the scalar projection ``h · v / ‖v‖`` (hidden-state units) of the
residual stream at chosen layers (block-output convention, see :mod:`personavec.core.layers`)
onto one or more vectors (:class:`MonitorSpec`), for every real token of every sequence: the
prompt tokens of a prefill call and the token fed at each cached decode step. Padding is never
recorded.

Hooks come from the one runtime, :mod:`personavec.core.hooks`, which reads each forward call's
``attention_mask`` and KV-cache length, so positions are per sequence and a left-padded batch
under cached decoding is recorded exactly like each request alone. The cost is one
``[tokens, hidden] × [hidden, k]`` matmul per monitored layer per forward call; results stay on
the device and move to the CPU once per call.

Sequences: each prefill call (no KV cache) starts ``batch`` new sequences, numbered in order of
arrival across the monitor's life (``0, 1, …``); cached decode calls continue the sequences of
the latest prefill. Token index ``0`` is a sequence's first real token; generated tokens follow
the prompt. A generated token is read when it is fed back to the model, so the last token of a
``generate`` call (never fed back) has no reading. After a sequence feeds a stop token (its EOS /
end of turn), later tokens of that row (the padding ``generate`` feeds to finished rows) are not
recorded.

Order with steering: hooks run in registration order. A monitor started *after*
:func:`personavec.core.steering.steer` at the same layer sees the steered stream; one started
before it sees the stream before steering. :class:`ConditionalSteering` is part of the monitor:
at its layer, every reading of that layer is the value *before* its change.

Conditional steering is the ``guard`` operator of :mod:`personavec.core.steering` (a gate plus
``add`` with ``−coef``): it subtracts ``coef · v`` (the unnormalised vector) from a token's
residual at the spec's layer only when that token's projection, measured just before the change
(the monitor's own reading, passed to :func:`~personavec.core.steering.gate`), is above
``threshold``. Below the threshold the stream is left untouched (``torch.where`` copies the
original values), so outputs are bit-identical to running without it. A guarded position that
becomes NaN or inf stops the forward pass with the operators' one non-finite error.

The log lives in :mod:`personavec.monitor.log`, the terminal meter in
:mod:`personavec.monitor.live`, and generation with a monitor in
:mod:`personavec.monitor.generate`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from personavec.core.hooks import ForwardCall, LayerHook, install_hooks
from personavec.core.layers import find_blocks
from personavec.core.steering import (
    Intervention,
    gate,
    guarded,
    non_finite_error,
    prepare_intervention,
)
from personavec.errors import SteeringError
from personavec.monitor.log import ReadingLog
from personavec.monitor.specs import (
    Alert,
    AlertCallback,
    ConditionalSteering,
    MonitorSpec,
    Reading,
)

__all__ = [
    "Alert",
    "AlertCallback",
    "ConditionalSteering",
    "MonitorSpec",
    "Reading",
    "TokenMonitor",
    "start_monitor",
]


@dataclass
class _LayerPlan:
    layer: int
    names: list[str]
    units: torch.Tensor  # float32 [hidden, k], columns v / ‖v‖
    guards: list[tuple[int, int, Intervention]]  # (rule index, column, prepared guard operator)


class TokenMonitor:
    """Record per-token projections on ``model`` until :meth:`remove` (or the ``with`` exit).

    Args:
        model: a transformers causal LM.
        specs: what to watch; names must be unique.
        on_alert: called as ``on_alert(sequence, token_index, name, value)`` for each generated
            token whose value is strictly above its spec's threshold.
        alert_prompt_last: also check the last prompt token of each sequence.
        conditional: steer-back rules (their specs are monitored too).
        log: a :class:`~personavec.monitor.log.ReadingLog`; each finished batch of sequences (one
            ``generate`` call) is written in one transaction.
        stop_ids: tokens that end a sequence (default: the model's ``eos_token_id``).
        blocks_path: dotted path to the decoder blocks, when not found automatically.
        raise_non_finite: raise when a guarded position becomes NaN or inf (False: the caller
            checks each row itself, as the server does, so one row's failure spares the others).

    Attributes:
        readings: per sequence, a list of :class:`Reading` ``(position, is_prompt, values)``.
        token_ids: per sequence, the token id of each reading (``-1`` when called with embeds).
        alerts: every :class:`Alert` raised, in order.
        steered: per sequence, the positions where conditional steering changed the stream.
    """

    def __init__(
        self,
        model: nn.Module,
        specs: Sequence[MonitorSpec] | MonitorSpec,
        *,
        on_alert: AlertCallback | None = None,
        alert_prompt_last: bool = False,
        conditional: Sequence[ConditionalSteering] = (),
        log: ReadingLog | None = None,
        stop_ids: Iterable[int] | None = None,
        blocks_path: str | None = None,
        raise_non_finite: bool = True,
    ) -> None:
        self.model = model
        self.raise_non_finite = raise_non_finite
        self.conditional = list(conditional)
        self.specs = _merge_specs(specs, self.conditional)
        self.on_alert = on_alert
        self.alert_prompt_last = alert_prompt_last
        self.log = log
        self.stop_ids = set(_default_stop_ids(model) if stop_ids is None else stop_ids)
        self.readings: list[list[Reading]] = []
        self.token_ids: list[list[int]] = []
        self.times: list[list[float]] = []
        self.alerts: list[Alert] = []
        self.steered: list[list[int]] = []
        self._finished: list[bool] = []
        self._batch: tuple[int, int] | None = None  # (first sequence, batch size) of the latest
        self._flushed = 0
        # The forward call in flight: layer → float32 [b, s, k]; conditional idx → bool [b, s].
        self._parts: dict[int, torch.Tensor] = {}
        self._fired: dict[int, torch.Tensor] = {}
        self._broken: torch.Tensor | None = None  # device flag: a guarded position is not finite
        self._skip = False

        self._plans = self._build_plans(find_blocks(model, blocks_path))
        self._names = [name for plan in self._plans for name in plan.names]
        self._layer_of = {s.name: s.layer for s in self.specs}
        by_name = {s.name: s for s in self.specs}
        self._thresholds = [by_name[n].threshold for n in self._names]
        hooks = {plan.layer: [self._layer_hook(plan)] for plan in self._plans}
        self._hooks = install_hooks(
            model, hooks, blocks_path=blocks_path, on_start=self._new_call, on_end=self._end_call
        )

    def _build_plans(self, blocks: nn.ModuleList) -> list[_LayerPlan]:
        """Per monitored layer: the unit vectors as columns, and the conditional rules there."""
        param = next(blocks.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        hidden = _hidden_size(self.model)
        for spec in self.specs:
            if hidden is not None and spec.vector.shape[0] != hidden:
                raise SteeringError(
                    f"monitor vector {spec.name!r} has width {spec.vector.shape[0]} but the model "
                    f"has hidden size {hidden}; use a vector extracted from this model"
                )
        plans: list[_LayerPlan] = []
        for layer in sorted({s.layer for s in self.specs}):
            at_layer = [s for s in self.specs if s.layer == layer]
            units = torch.stack([s.vector.float() / s.vector.float().norm() for s in at_layer], 1)
            plan = _LayerPlan(layer, [s.name for s in at_layer], units.to(device), [])
            for index, rule in enumerate(self.conditional):
                if rule.spec.layer == layer:
                    column = plan.names.index(rule.spec.name)
                    item = prepare_intervention(rule.intervention(), blocks)
                    plan.guards.append((index, column, item))
            plans.append(plan)
        return plans

    # ---- hooks ----------------------------------------------------------------------------
    def _new_call(self, call: ForwardCall | None) -> None:
        self._parts, self._fired, self._broken, self._skip = {}, {}, None, False

    def _layer_hook(self, plan: _LayerPlan) -> LayerHook:
        def hook(hidden: torch.Tensor, call: ForwardCall) -> torch.Tensor | None:
            if not call.tracked:
                self._skip = True  # not a tracked forward (e.g. a block run alone): record nothing
                return None
            values = hidden.float() @ plan.units  # [b, s, k]
            self._parts[plan.layer] = values
            changed = hidden
            for index, column, item in plan.guards:
                fire = gate(values[..., column], call.rows_mask(item.positions, item.rows), item)
                self._fired[index] = fire
                changed = guarded(changed, fire, item)
                broken = (fire.unsqueeze(-1) & ~torch.isfinite(changed)).any()
                self._broken = broken if self._broken is None else self._broken | broken
            return None if changed is hidden else changed

        return hook

    def _end_call(self, call: ForwardCall | None) -> None:
        parts, fired, broken = self._parts, self._fired, self._broken
        self._new_call(None)
        if self.raise_non_finite and broken is not None and bool(broken):
            raise non_finite_error([rule.intervention() for rule in self.conditional])
        if call is None or not call.tracked or any(p.layer not in parts for p in self._plans):
            return
        token_ids = call.ids if call.ids is not None else torch.full_like(call.positions, -1)
        columns = [parts[plan.layer] for plan in self._plans]
        extra = [token_ids, call.positions, call.real, call.mask("prompt")]
        extra += [fired[i] for i in range(len(self.conditional)) if i in fired]
        packed = torch.cat(
            [torch.cat(columns, dim=-1).double(), torch.stack(extra, dim=-1).double()], dim=-1
        )
        self._record(packed.cpu().tolist(), call.is_prefill, sorted(fired))

    # ---- bookkeeping (CPU, once per call) -------------------------------------------------
    def _record(self, rows: list[list[list[float]]], is_prefill: bool, fired: list[int]) -> None:
        batch = len(rows)
        if is_prefill or self._batch is None:
            self.flush()
            first = len(self.readings)
            for _ in range(batch):
                self.readings.append([])
                self.token_ids.append([])
                self.times.append([])
                self.steered.append([])
                self._finished.append(False)
            self._batch = (first, batch)
        first, size = self._batch
        if size != batch:
            return  # a decode call that does not continue the latest batch: nothing to attach to
        k = len(self._names)
        now = time.time()
        thresholds = self._thresholds
        for row_index, row in enumerate(rows):
            seq = first + row_index
            if self._finished[seq]:
                continue
            readings, ids, times = self.readings[seq], self.token_ids[seq], self.times[seq]
            last_prompt: Reading | None = None
            for token in row:
                if not token[k + 2]:
                    continue  # padding
                token_id = int(token[k])
                position = int(token[k + 1])
                is_prompt = bool(token[k + 3])
                values = dict(zip(self._names, token[:k], strict=True))
                reading = Reading(position, is_prompt, values)
                readings.append(reading)
                ids.append(token_id)
                times.append(now)
                if any(token[k + 4 + j] for j in range(len(fired))):
                    self.steered[seq].append(position)
                if is_prompt:
                    last_prompt = reading
                    continue
                self._check(seq, reading, thresholds)
                if token_id in self.stop_ids:
                    self._finished[seq] = True
                    break
            if self.alert_prompt_last and last_prompt is not None:
                # the last prompt token of a prefill (prompt-only or teacher-forced) call
                self._check(seq, last_prompt, thresholds)

    def _check(self, seq: int, reading: Reading, thresholds: list[float | None]) -> None:
        for (name, value), threshold in zip(reading.values.items(), thresholds, strict=True):
            if threshold is not None and value > threshold:
                alert = Alert(seq, reading.position, name, value)
                self.alerts.append(alert)
                if self.on_alert is not None:
                    self.on_alert(*alert)

    # ---- results --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Spec names, in the order of the layers they sit at."""
        return list(self._names)

    def layer_of(self, name: str) -> int:
        return self._layer_of[name]

    def series(self, sequence: int, name: str, *, prompt: bool | None = None) -> list[float]:
        """One sequence's values of ``name``; ``prompt=True/False`` keeps only prompt/generated."""
        return [
            r.values[name]
            for r in self.readings[sequence]
            if prompt is None or r.is_prompt == prompt
        ]

    def flush(self) -> None:
        """Write not-yet-logged sequences to the log (one transaction); called automatically."""
        if self.log is None or self._flushed >= len(self.readings):
            self._flushed = len(self.readings)
            return
        start = self._flushed
        self._flushed = len(self.readings)
        rows = []
        for seq in range(start, len(self.readings)):
            for reading, token_id, stamp in zip(
                self.readings[seq], self.token_ids[seq], self.times[seq], strict=True
            ):
                for name, value in reading.values.items():
                    rows.append(
                        (seq, reading.position, token_id, reading.is_prompt, name,
                         self._layer_of[name], value, stamp)
                    )  # fmt: skip
        self.log.write(rows)

    # ---- teardown -------------------------------------------------------------------------
    def remove(self) -> None:
        """Remove every hook and flush the log; safe to call twice."""
        self._hooks.remove()
        self._new_call(None)
        self.flush()

    @property
    def active(self) -> bool:
        return self._hooks.active

    def __enter__(self) -> TokenMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def start_monitor(
    model: nn.Module, specs: Sequence[MonitorSpec] | MonitorSpec, **options: Any
) -> TokenMonitor:
    """Start monitoring ``model``; returns the monitor, whose ``remove()`` stops it.

    ``options`` are those of :class:`TokenMonitor`.
    """
    return TokenMonitor(model, specs, **options)


def _default_stop_ids(model: nn.Module) -> list[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        return [eos]
    if isinstance(eos, list | tuple):
        return [int(i) for i in eos]
    return []


def _hidden_size(model: nn.Module) -> int | None:
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        embeddings = getter()
    except (NotImplementedError, AttributeError):
        return None
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[1]) if isinstance(weight, torch.Tensor) else None


def _merge_specs(
    specs: Sequence[MonitorSpec] | MonitorSpec, conditional: Sequence[ConditionalSteering]
) -> list[MonitorSpec]:
    """The specs to watch: ``specs`` plus each conditional rule's spec not already among them."""
    merged = [specs] if isinstance(specs, MonitorSpec) else list(specs)
    for rule in conditional:
        known = next((s for s in merged if s.name == rule.spec.name), None)
        if known is None:
            merged.append(rule.spec)
        elif known is not rule.spec and (
            known.layer != rule.spec.layer or not torch.equal(known.vector, rule.spec.vector)
        ):
            raise SteeringError(f"two different monitor specs are named {known.name!r}")
    names = [s.name for s in merged]
    if len(set(names)) != len(names):
        raise SteeringError(f"monitor spec names must be unique, got {names}")
    if not merged:
        raise SteeringError("nothing to monitor; give at least one MonitorSpec")
    return merged

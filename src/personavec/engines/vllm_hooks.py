"""Per-request steering, readings and guards inside vLLM's flattened batches.

vLLM (V1) runs every scheduled request of a step in one forward pass over a flat
``[num_tokens, hidden]`` tensor: request ``i`` owns tokens ``query_start_loc[i] …
query_start_loc[i+1]`` in the order of ``input_batch.req_ids``, and each token's absolute
position in its own sequence comes with the pass (``positions``). :class:`VLLMHooks` reads that
map from the model runner at the start of each pass and then, at each hooked layer, applies
every request's own operators to its own tokens only, with the operator functions of
:mod:`personavec.core.steering` (the same math as the HF engine: ``add``, ``ablate``, ``cap``,
``guard``).

Residual stream. A vLLM decoder layer returns ``(hidden_states, residual)`` and the next layer's
norm adds them (the residual add is fused into it), so the block output of personavec's layer
convention is their sum ``h``. Where anything changes, the hook returns ``(h', 0)``: the next
layer's fused add then sees exactly ``h'`` (``h' + 0 == h'``), and the tokens of untouched
requests keep ``h`` bit for bit. Layer 0 (the embedding output) is the first layer's input.

Positions (DESIGN.md "Steering positions"), per request with prompt length ``P`` and absolute
position ``p``: ``all`` every token; ``prompt`` ``p < P``; ``response`` ``p ≥ P − 1`` (the last
prompt token and every generated token). Absolute positions make chunked prefill, prefix-cache
hits and recomputation after preemption all steer the same tokens.

Readings: the projection ``h · v̂`` after the request's steering at that layer (as the HF
server's monitor, installed after steering, sees it), for the last prompt token and every
generated token that is fed back (the final token is never fed back, so it has no reading, as
with the HF monitor). A guard gates on that reading and then adds ``−coef · v``
(:func:`~personavec.core.steering.gate`, :func:`~personavec.core.steering.guarded`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from personavec.core.layers import check_layer, find_blocks
from personavec.core.positions import PositionMode
from personavec.core.steering import (
    OPERATOR_FUNCTIONS,
    Intervention,
    gate,
    guarded,
    prepare_intervention,
)
from personavec.errors import PersonavecError
from personavec.monitor.specs import ConditionalSteering, MonitorSpec

REQUEST_KEY = "personavec_request"
"""``SamplingParams.extra_args`` entry naming a request's tracked controls."""


@dataclass(frozen=True)
class RequestControls:
    """What one request asks of the forward pass besides its tokens.

    Attributes:
        interventions: raw steering interventions (e.g. ``SteeringSetting.interventions()``),
            applied at each layer in this order.
        monitor: vectors to read (names unique within the request).
        guards: steer-back rules; their specs are read too.
    """

    interventions: tuple[Intervention, ...] = ()
    monitor: tuple[MonitorSpec, ...] = ()
    guards: tuple[ConditionalSteering, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.interventions or self.monitor or self.guards)

    @property
    def changes_stream(self) -> bool:
        """True when the controls change activations (so KV computed under them differs)."""
        return bool(self.interventions or self.guards)

    def specs(self) -> list[MonitorSpec]:
        """The monitored specs plus each guard's spec not already among them."""
        out = list(self.monitor)
        for rule in self.guards:
            if all(s.name != rule.spec.name for s in out):
                out.append(rule.spec)
        return out

    def salt(self) -> str | None:
        """A prefix-cache salt: a hash of every change to the stream (None when unchanged).

        Vectors enter by their bytes, so two settings share cached KV only when they change
        the residual stream identically; readings do not change KV and add nothing.
        """
        if not self.changes_stream:
            return None
        items = list(self.interventions) + [g.intervention() for g in self.guards]
        digest = hashlib.sha256()
        for item in items:
            fields = [item.layer, item.op, item.positions, item.coef, item.threshold, item.bound]
            digest.update(json.dumps(fields).encode())
            digest.update(item.vector.detach().float().cpu().numpy().tobytes())
        return "personavec-" + digest.hexdigest()[:32]


@dataclass
class RequestRecord:
    """What the hooks saw for one request.

    Attributes:
        readings: absolute position → ``{spec name: h · v̂}``.
        guarded: positions where a guard changed the stream.
        non_finite: a position of a request that changes the stream became NaN or inf.
        served: the hooks found the request in a forward pass (False after decoding means its
            controls were never applied: an unsupported model layout).
    """

    readings: dict[int, dict[str, float]] = field(default_factory=dict)
    guarded: set[int] = field(default_factory=set)
    non_finite: bool = False
    served: bool = False


@dataclass
class _Plan:
    """Controls prepared for the model: per layer, operators, reading units and guards."""

    steer: dict[int, list[Intervention]]
    names: dict[int, list[str]]
    units: dict[int, torch.Tensor]  # float32 [hidden, k]
    guards: dict[int, list[tuple[int, Intervention]]]  # (column, prepared guard)
    first_change: int | None = field(init=False)
    """The first layer whose stream this plan changes (None: readings only); fixed once here,
    since the hooks ask at every layer of every pass."""

    def __post_init__(self) -> None:
        changed = set(self.steer) | set(self.guards)
        self.first_change = min(changed) if changed else None

    def acts_at(self, layer: int) -> bool:
        """Steers, reads or checks for NaN/inf at ``layer`` (every layer after a change)."""
        first = self.first_change
        return layer in self.steer or layer in self.units or (first is not None and layer >= first)


def _prepare(controls: RequestControls, blocks: nn.ModuleList) -> _Plan:
    n = len(blocks)
    steer: dict[int, list[Intervention]] = {}
    for item in controls.interventions:
        check_layer(item.layer, n)
        steer.setdefault(item.layer, []).append(prepare_intervention(item, blocks))
    param = next(blocks.parameters())
    names: dict[int, list[str]] = {}
    units: dict[int, torch.Tensor] = {}
    specs = controls.specs()
    for layer in sorted({s.layer for s in specs}):
        check_layer(layer, n)
        at = [s for s in specs if s.layer == layer]
        names[layer] = [s.name for s in at]
        stacked = torch.stack([s.vector.float() / s.vector.float().norm() for s in at], 1)
        units[layer] = stacked.to(param.device)
    guards: dict[int, list[tuple[int, Intervention]]] = {}
    for rule in controls.guards:
        column = names[rule.spec.layer].index(rule.spec.name)
        item = prepare_intervention(rule.intervention(), blocks)
        guards.setdefault(rule.spec.layer, []).append((column, item))
    return _Plan(steer, names, units, guards)


@dataclass
class _Group:
    """The tokens of one pass that share a plan: flat indices, positions, owners."""

    plan: _Plan
    index: torch.Tensor  # long [t] flat token indices
    positions: torch.Tensor  # long [t]
    prompt_lens: torch.Tensor  # long [t]
    records: list[RequestRecord]  # per token
    where: list[int]  # per token: its absolute position (host copy of ``positions``)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # mode → bool [t]

    def mask(self, mode: PositionMode) -> torch.Tensor:
        """Bool ``[t]``: the group's tokens that ``mode`` selects (module docstring)."""
        if mode not in self.masks:
            if mode == "all":
                self.masks[mode] = torch.ones_like(self.positions, dtype=torch.bool)
            elif mode == "prompt":
                self.masks[mode] = self.positions < self.prompt_lens
            else:
                self.masks[mode] = self.positions >= self.prompt_lens - 1
        return self.masks[mode]


class VLLMHooks:
    """Hooks on a vLLM model that serve each tracked request its own controls.

    Args:
        model: the runner's model (``model_runner.get_model()``).
        runner: the model runner (its ``input_batch``, ``query_start_loc`` and ``requests``).
    """

    def __init__(self, model: nn.Module, runner: Any) -> None:
        self.runner = runner
        self.blocks = find_blocks(model)
        self._tracked: dict[str, tuple[_Plan, RequestRecord]] = {}
        self._plans: dict[int, tuple[RequestControls, _Plan]] = {}
        self._groups: list[_Group] | None = None
        # The pass starts at the first block, which receives ``(positions, hidden, residual)``.
        # Not on the model owning the blocks: vLLM's compile decorator calls its ``forward``
        # directly, so hooks on that module never run (even in eager mode).
        self._handles = [
            self.blocks[0].register_forward_pre_hook(self._start, with_kwargs=True),
        ]
        for index, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_hook(self._output_hook(index + 1)))

    # ---- tracking -------------------------------------------------------------------------
    def track(self, key: str, controls: RequestControls) -> None:
        """Serve ``controls`` to the request whose ``extra_args`` name ``key``."""
        cached = self._plans.get(id(controls))
        if cached is None or cached[0] is not controls:
            cached = (controls, _prepare(controls, self.blocks))
            self._plans[id(controls)] = cached
        self._tracked[key] = (cached[1], RequestRecord())

    def record(self, key: str) -> RequestRecord | None:
        """What the hooks saw so far for ``key`` (None when not tracked)."""
        tracked = self._tracked.get(key)
        return None if tracked is None else tracked[1]

    def release(self, keys: Iterable[str]) -> dict[str, RequestRecord]:
        """Stop tracking ``keys``; their records."""
        out = {key: self._tracked.pop(key)[1] for key in keys if key in self._tracked}
        if not self._tracked:
            self._plans.clear()
        return out

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ---- one forward pass -----------------------------------------------------------------
    def _start(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The first block's pre-hook: lay out this pass's tracked tokens, then apply layer 0
        (the embedding output, the block's ``hidden_states`` input)."""
        self._groups = None
        if not self._tracked:
            return None
        names = ("positions", "hidden_states", "residual")
        values = dict(zip(names, args, strict=False)) | kwargs
        positions, hidden = values.get("positions"), values.get("hidden_states")
        if not isinstance(positions, torch.Tensor) or positions.ndim != 1:
            return None
        self._groups = self._layout(positions)
        if not isinstance(hidden, torch.Tensor):
            return None
        if values.get("residual") is not None:
            if any(0 in g.plan.steer or 0 in g.plan.units for g in self._groups):
                raise PersonavecError(
                    "this model's first block gets a residual, so layer 0 cannot be steered or "
                    "read on vLLM; use a layer >= 1 or --engine hf"
                )
            return None
        changed = self._apply(0, hidden)
        if changed is None:
            return None
        if len(args) > 1:
            return (args[0], changed, *args[2:]), kwargs
        return args, kwargs | {"hidden_states": changed}

    def _layout(self, positions: torch.Tensor) -> list[_Group]:
        """Group this pass's tracked tokens by plan (see the module docstring)."""
        runner = self.runner
        n = int(runner.input_batch.num_reqs)
        starts = runner.query_start_loc.cpu[: n + 1].tolist()
        if n == 0 or starts[-1] > positions.shape[0]:
            return []  # a dummy or profiling pass
        by_plan: dict[int, tuple[_Plan, list[tuple[int, int, int, RequestRecord]]]] = {}
        for i, req_id in enumerate(runner.input_batch.req_ids[:n]):
            state = runner.requests.get(req_id)
            params = getattr(state, "sampling_params", None)
            key = (getattr(params, "extra_args", None) or {}).get(REQUEST_KEY)
            if key not in self._tracked:
                continue
            plan, record = self._tracked[key]
            record.served = True
            spans = by_plan.setdefault(id(plan), (plan, []))[1]
            spans.append((starts[i], starts[i + 1], int(state.num_prompt_tokens), record))
        groups = []
        for plan, spans in by_plan.values():
            index = torch.cat([torch.arange(a, b) for a, b, _, _ in spans])
            lens = torch.cat([torch.full((b - a,), p) for a, b, p, _ in spans])
            records = [r for a, b, _, r in spans for _ in range(b - a)]
            device = positions.device
            pos = positions[index.to(device)].long()
            groups.append(
                _Group(plan, index.to(device), pos, lens.to(device), records, pos.tolist())
            )
        return groups

    def _output_hook(self, layer: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, torch.Tensor):
                return self._apply(layer, output)
            hidden, residual = output[0], output[1]
            total = hidden if residual is None else hidden + residual
            changed = self._apply(layer, total)
            if changed is None:
                return None
            return (changed, torch.zeros_like(changed), *output[2:])

        return hook

    def _apply(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """Every group's operators, readings and guards at ``layer`` on the flat ``hidden``
        ``[tokens, width]``; the new tensor, or None when nothing changed."""
        groups = self._groups
        if not groups or not any(g.plan.acts_at(layer) for g in groups):
            return None
        changed = hidden
        for group in groups:
            changed = self._apply_group(layer, group, changed)
        return None if changed is hidden else changed

    def _apply_group(self, layer: int, group: _Group, hidden: torch.Tensor) -> torch.Tensor:
        plan = group.plan
        index = group.index
        items = plan.steer.get(layer, [])
        if items:
            rows = hidden[index].unsqueeze(0)
            for item in items:
                rows = OPERATOR_FUNCTIONS[item.op](rows, group.mask(item.positions)[None], item)
            hidden = hidden.index_copy(0, index, rows[0])
        if layer in plan.units:
            rows2 = hidden[index]
            values = rows2.float() @ plan.units[layer]  # [t, k]
            self._record(layer, group, values)
            for column, item in plan.guards.get(layer, []):
                fire = gate(values[:, column], group.mask(item.positions), item)
                if bool(fire.any()):
                    rows2 = guarded(rows2, fire, item)
                    hidden = hidden.index_copy(0, index, rows2)
                    for token in fire.nonzero().flatten().tolist():
                        group.records[token].guarded.add(group.where[token])
        first = plan.first_change
        if first is not None and layer >= first:
            # Every layer after a change: an overflow in an unsteered later layer must not
            # reach the KV cache or pass unflagged either.
            hidden = _zero_non_finite(hidden, group)
        return hidden

    def _record(self, layer: int, group: _Group, values: torch.Tensor) -> None:
        keep = group.mask("response").nonzero().flatten().tolist()
        if not keep:
            return
        names = group.plan.names[layer]
        rows = values[keep].double().cpu().tolist()
        for token, row in zip(keep, rows, strict=True):
            slot = group.records[token].readings.setdefault(group.where[token], {})
            slot.update(zip(names, row, strict=True))


def _zero_non_finite(hidden: torch.Tensor, group: _Group) -> torch.Tensor:
    """Flag the group's tokens that became NaN or inf and set them to zero.

    The request fails (the engine raises once it finishes), but its keys and values must stay
    finite: vLLM frees its cache blocks for reuse, and a stale NaN in a reused block would leak
    into whichever request gets it next.
    """
    rows = hidden[group.index]
    finite = torch.isfinite(rows).all(dim=-1)
    if bool(finite.all()):
        return hidden
    bad = (~finite).nonzero().flatten()
    for token in bad.tolist():
        group.records[token].non_finite = True
    return hidden.index_copy(0, group.index[bad], torch.zeros_like(rows[bad]))


def merge_controls(parts: Sequence[RequestControls]) -> RequestControls:
    """One request's controls from several parts (operators in order)."""
    return RequestControls(
        tuple(i for p in parts for i in p.interventions),
        tuple(s for p in parts for s in p.monitor),
        tuple(g for p in parts for g in p.guards),
    )

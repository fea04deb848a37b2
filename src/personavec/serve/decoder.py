"""Continuous batching: rows join and leave a running batch between decoding steps.

A :class:`Decoder` holds the running rows, their KV cache (transformers ``DynamicCache``,
``[batch, heads, seq, head_dim]`` per layer) and their attention mask ``[batch, seq]``. New jobs
are prefilled together in their own left-padded forward pass, then merged into the running batch
by left-padding the shorter cache (padding is masked, as in any left-padded batch); finished
rows are dropped from the cache at once, and columns that only hold padding are trimmed.

Each forward pass installs that pass's hooks from the one hook runtime: every job's steering with
``rows=(i,)`` for its current row ``i``, and one :class:`TokenMonitor` over the union of the
monitored vectors (guards are its conditional rules, also per row). Position ids count each row's
real tokens, as ``generate`` does, so a row is decoded exactly as it would be alone (greedy:
``argmax`` of the same logits; sampling: the job's own :class:`GumbelSampler` stream).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from personavec.core.models import LoadedModel
from personavec.core.padding import left_pad
from personavec.core.steering import Intervention, steer
from personavec.engines.generation import GumbelSampler, context_length
from personavec.errors import PersonavecError
from personavec.monitor.monitor import ConditionalSteering, MonitorSpec, TokenMonitor
from personavec.monitor.specs import Reading
from personavec.serve.jobs import Job
from personavec.serve.rows import RowState

_HookPlan = tuple[list[Intervention], list[MonitorSpec], list[ConditionalSteering]]


@dataclasses.dataclass
class _Live:
    """A running row: its state, sampler and the token to feed next."""

    state: RowState
    sampler: GumbelSampler | None
    next_token: int = -1


class Decoder:
    """The running batch of one model."""

    def __init__(self, loaded: LoadedModel, stop_ids: Sequence[int], pad_id: int) -> None:
        self.loaded = loaded
        self.stop_ids = set(stop_ids)
        self.pad_id = pad_id
        self.limit = context_length(loaded)
        self.live: list[_Live] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # long [batch, seq] over the cache + next token
        self.steps = 0
        self._plan: tuple[list[_Live], _HookPlan] | None = None
        # transformers 5.2x renamed the forward's `past_key_values` to `cache` (old name deprecated)
        forward = inspect.signature(type(loaded.model).forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward else "past_key_values"

    @property
    def size(self) -> int:
        return len(self.live)

    def admit(self, jobs: Sequence[Job]) -> None:
        """Prefill ``jobs`` in one pass, choose their first tokens and join the running batch."""
        if not jobs:
            return
        device = self.loaded.device
        ids, mask, positions = left_pad([j.prompt_ids for j in jobs], self.pad_id)
        rows = [_Live(RowState(j, self.loaded.tokenizer, self.stop_ids), _sampler(j)) for j in jobs]
        cache = DynamicCache(config=self.loaded.model.config)
        logits = self._forward(rows, ids.to(device), mask.to(device), positions.to(device), cache)
        self._choose(rows, logits)
        self._merge(rows, cache, mask.to(device))

    def step(self) -> None:
        """One decoding step for every running row."""
        if not self.live:
            return
        assert self.cache is not None and self.mask is not None
        device = self.loaded.device
        ids = torch.tensor([[row.next_token] for row in self.live], device=device)
        mask = F.pad(self.mask, (0, 1), value=1)
        positions = mask.sum(dim=1, keepdim=True) - 1
        logits = self._forward(self.live, ids, mask, positions, self.cache)
        self.mask = mask
        self._choose(self.live, logits)
        self._drop_finished()

    def close_all(self) -> None:
        for row in self.live:
            row.state.close()
        self._drop_finished()

    # ---- internals ------------------------------------------------------------------------
    def _forward(
        self,
        rows: Sequence[_Live],
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        """Logits ``[batch, vocab]`` (float32) of the last position, with every row's hooks."""
        model = self.loaded.model
        interventions, specs, guards = self._hook_plan(rows)
        monitor = None
        with contextlib.ExitStack() as stack, torch.no_grad():
            if interventions:
                stack.enter_context(steer(model, interventions))
            if specs:
                monitor = TokenMonitor(model, specs, conditional=guards, stop_ids=())
                stack.enter_context(monitor)
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_kwarg: cache},
                logits_to_keep=1,
            )
        self.steps += 1
        for index, row in enumerate(rows):
            readings: list[Reading] = monitor.readings[index] if monitor else []
            steered: list[int] = monitor.steered[index] if monitor else []
            row.state.add_readings(readings, steered)
        return out.logits[:, -1, :].float()

    def _hook_plan(self, rows: Sequence[_Live]) -> _HookPlan:
        """Every row's steering and guards restricted to its row, and the union of monitored
        specs; rebuilt only when the rows (or their order) change, not at every step."""
        if self._plan is not None and _same_rows(self._plan[0], rows):
            return self._plan[1]
        interventions = [
            dataclasses.replace(item, rows=(index,))
            for index, row in enumerate(rows)
            for item in row.state.job.interventions
        ]
        specs: dict[str, MonitorSpec] = {}
        guards: list[ConditionalSteering] = []
        for index, row in enumerate(rows):
            readout = row.state.job.readout
            for spec in readout.specs:
                specs.setdefault(spec.name, spec)
            guards += [
                dataclasses.replace(g, spec=specs[g.spec.name], rows=(index,))
                for g in readout.guards
            ]
        plan = (interventions, list(specs.values()), guards)
        self._plan = (list(rows), plan)  # holding the rows keeps the identity check sound
        return plan

    def _choose(self, rows: Sequence[_Live], logits: torch.Tensor) -> None:
        """Pick each row's token (greedy or its own sampler) and hand it to the row."""
        wants_logprobs = any(r.state.job.logprobs is not None for r in rows)
        log_probs = torch.log_softmax(logits, dim=-1) if wants_logprobs else None
        for index, row in enumerate(rows):
            scores = logits[index : index + 1]
            if row.sampler is not None:
                scores = row.sampler(None, scores)  # type: ignore[arg-type]
            token = int(scores.argmax(dim=-1))
            row.next_token = token
            row.state.push(token, log_probs[index] if log_probs is not None else None)
            full = self.limit is not None and self._length(row) >= self.limit
            if full and not row.state.done:
                row.state.close()

    def _length(self, row: _Live) -> int:
        return row.state.prompt_len + len(row.state.tokens) + 1

    def _merge(self, rows: list[_Live], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add ``rows`` (with their prefill cache and mask) to the running batch."""
        keep = [i for i, row in enumerate(rows) if not row.state.done]
        if len(keep) < len(rows):
            rows = [rows[i] for i in keep]
            if not rows:
                return
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            mask = mask[index]
        if self.cache is None or self.mask is None or not self.live:
            self.live, self.cache, self.mask = rows, cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for running, joining in zip(_kv_layers(self.cache), _kv_layers(cache), strict=True):
            for name in ("keys", "values"):
                a, b = getattr(running, name), getattr(joining, name)
                a = F.pad(a, (0, 0, width - a.shape[-2], 0))
                b = F.pad(b, (0, 0, width - b.shape[-2], 0))
                setattr(running, name, torch.cat([a, b], dim=0))
        running_mask = F.pad(self.mask, (width - self.mask.shape[1], 0))
        self.mask = torch.cat([running_mask, F.pad(mask, (width - mask.shape[1], 0))])
        self.live += rows

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self.live) if not row.state.done]
        if len(keep) == len(self.live):
            return
        self.live = [self.live[i] for i in keep]
        if not self.live:
            self.cache, self.mask, self._plan = None, None, None
            return
        assert self.cache is not None and self.mask is not None
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        mask = self.mask[index]
        start = int(mask.any(dim=0).long().argmax())  # leading columns that are all padding
        if start:
            mask = mask[:, start:]
            for layer in _kv_layers(self.cache):
                layer.keys = layer.keys[..., start:, :]
                layer.values = layer.values[..., start:, :]
        self.mask = mask


def _same_rows(a: Sequence[_Live], b: Sequence[_Live]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _sampler(job: Job) -> GumbelSampler | None:
    if job.temperature == 0:
        return None
    return GumbelSampler([job.seed], job.temperature, job.top_p)


def _kv_layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers, each holding ``keys`` / ``values`` ``[batch, heads, seq, dim]``."""
    layers = list(cache.layers)
    if not all(isinstance(layer, DynamicLayer) for layer in layers):
        raise PersonavecError(
            "the server's continuous batching needs a plain dynamic KV cache (no sliding-window "
            "or linear-attention layers); serve a model with full attention"
        )
    return layers

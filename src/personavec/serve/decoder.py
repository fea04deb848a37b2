"""Continuous batching: rows join and leave a running batch between decoding steps.

A :class:`Decoder` holds the running rows, their KV cache (transformers ``DynamicCache``,
``[batch, heads, seq, head_dim]`` per layer) and their attention mask ``[batch, seq]``. New jobs
are prefilled together in their own left-padded forward pass, then merged into the running batch
by left-padding the shorter cache (padding is masked, as in any left-padded batch); finished
rows are dropped from the cache at once, and columns that only hold padding are trimmed. Merging
and trimming need a plain dynamic cache: for a model with sliding-window or linear-attention
layers (:func:`joins_batches` is False, checked once at start-up) the scheduler decodes one
sequence at a time instead.

The rows' hooks (:class:`~personavec.serve.hooks.BatchHooks`: every job's steering with
``rows=(i,)`` for its row ``i``, one monitor over the union of the monitored vectors, guards per
row) are installed once per batch membership and reused by every step until a row joins or
leaves. Position ids count each row's real tokens, as ``generate`` does, so a row is decoded
exactly as it would be alone (greedy: ``argmax`` of the same logits; sampling: the job's own
:class:`GumbelSampler` stream). A row whose activations or logits are not finite fails alone
(its request gets a 400 naming its setting); the other rows go on.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

from personavec.core.models import LoadedModel
from personavec.core.padding import left_pad
from personavec.engines.limits import context_length
from personavec.engines.sampling import GumbelSampler
from personavec.errors import PersonavecError
from personavec.serve.hooks import BatchHooks
from personavec.serve.jobs import Failed, Job
from personavec.serve.rows import RowState


@dataclasses.dataclass
class _Live:
    """A running row: its state, sampler and the token to feed next."""

    state: RowState
    sampler: GumbelSampler | None
    next_token: int = -1


def joins_batches(config: PretrainedConfig) -> bool:
    """True when the model's KV cache is a plain dynamic cache, so rows can join and leave a
    running batch; False for sliding-window or linear-attention layers (Gemma 2/3, Mistral with
    a window, hybrid models)."""
    return _plain(DynamicCache(config=config).layers)


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
        self.installs = 0  # hook installations (one per batch membership)
        self._hooks: BatchHooks | None = None
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
        try:
            logits = self._forward(
                rows, ids.to(device), mask.to(device), positions.to(device), cache
            )
            self._choose(rows, logits)
            self._merge(rows, cache, mask.to(device))
        finally:
            if not self.live:
                self.release()
            _deliver(rows)

    def step(self) -> None:
        """One decoding step for every running row."""
        if not self.live:
            return
        assert self.cache is not None and self.mask is not None
        device = self.loaded.device
        ids = torch.tensor([[row.next_token] for row in self.live], device=device)
        mask = F.pad(self.mask, (0, 1), value=1)
        positions = mask.sum(dim=1, keepdim=True) - 1
        rows = list(self.live)
        try:
            logits = self._forward(rows, ids, mask, positions, self.cache)
            self.mask = mask
            self._choose(rows, logits)
            self._drop_finished()
        finally:
            _deliver(rows)

    def close_all(self) -> None:
        rows = list(self.live)
        for row in rows:
            row.state.close()
        self._drop_finished()
        self.release()
        _deliver(rows)

    def release(self) -> None:
        """Remove the installed hooks (the model is left as it was); idempotent."""
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None

    # ---- internals ------------------------------------------------------------------------
    def _forward(
        self,
        rows: Sequence[_Live],
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        """Logits ``[batch, vocab]`` (float32) of the last position, with every row's hooks;
        rows whose activations or logits are not finite are failed (and leave the batch)."""
        hooks = self._install([row.state.job for row in rows])
        with torch.no_grad():
            out = self.loaded.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_kwarg: cache},
                logits_to_keep=1,
            )
        self.steps += 1
        logits = out.logits[:, -1, :].float()
        finite = hooks.finite(logits)
        for index, row in enumerate(rows):
            if not finite[index]:
                row.state.fail(_non_finite(row.state.job))
                continue
            row.state.add_readings(*hooks.take(index))
        return logits

    def _install(self, jobs: list[Job]) -> BatchHooks:
        """The hooks for ``jobs`` as rows ``0..``: reused while the membership is unchanged."""
        if self._hooks is not None and self._hooks.serves(jobs):
            return self._hooks
        self.release()
        self._hooks = BatchHooks(self.loaded.model, jobs)
        self.installs += 1
        return self._hooks

    def _choose(self, rows: Sequence[_Live], logits: torch.Tensor) -> None:
        """Pick each row's token (greedy or its own sampler) and hand it to the row."""
        wants_logprobs = any(r.state.job.logprobs is not None for r in rows)
        log_probs = torch.log_softmax(logits, dim=-1) if wants_logprobs else None
        for index, row in enumerate(rows):
            if row.state.done:
                continue  # failed in this pass
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
            self.cache, self.mask = None, None
            self.release()
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


def _deliver(rows: Sequence[_Live]) -> None:
    for row in rows:
        row.state.deliver()


def _non_finite(job: Job) -> Failed:
    """The failure of a row whose logits became NaN or inf: the request's steering or guard
    (named) is the cause, a 400; without either it is the model's own problem, a 500."""
    if job.setting:
        return Failed(
            f"{job.setting} made the activations NaN or inf; use a smaller coefficient", 400
        )
    return Failed("the model's activations became NaN or inf on this prompt", 500)


def _sampler(job: Job) -> GumbelSampler | None:
    if job.temperature == 0:
        return None
    return GumbelSampler([job.seed], job.temperature, job.top_p)


def _kv_layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers, each holding ``keys`` / ``values`` ``[batch, heads, seq, dim]``."""
    layers = list(cache.layers)
    if not _plain(layers):
        raise PersonavecError(  # the scheduler decodes such models one sequence at a time
            "the server's continuous batching needs a plain dynamic KV cache"
        )
    return layers


def _plain(layers: Sequence[Any]) -> bool:
    # exactly DynamicLayer: its sliding-window subclass keeps only the window's last tokens
    return all(type(layer) is DynamicLayer for layer in layers)

"""Activation capture: readouts of (prompt, response) pairs at every layer.

Pairs are rendered in the model's chat format, batched with left padding
(``[pad…, prompt…, response…]``), and run under ``torch.no_grad`` with hooks on the decoder
blocks (layer 0 = input of block 1, layer L = output of block L). Each hook reduces its block's
output to the requested readouts straight away, so memory stays flat: per-group means accumulate
as float32 running sums, and per-example readouts are kept only when asked for.

The forward pass stops after the deepest requested layer, and the LM head never runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from personavec.core.hooks import (
    ForwardCall,
    HookHandle,
    LayerHook,
    install_hooks,
    run_until_stopped,
    teacher_forcing,
)
from personavec.core.layers import n_layers, resolve_layers
from personavec.core.models import LoadedModel, Message, encode_prompt, encode_response
from personavec.core.padding import left_pad, position_ids
from personavec.core.positions import READOUTS, readout_masks


@dataclass(frozen=True)
class Example:
    """A chat prompt and the assistant's response to it.

    Attributes:
        messages: prompt turns (``system``? ``user``, ...), ending before the assistant answers.
        response: the answer text (tokenised without special tokens and appended).
        response_ids: the answer's token ids, when known (e.g. from generation); wins over text.
    """

    messages: Sequence[Message]
    response: str = ""
    response_ids: Sequence[int] | None = None


@dataclass
class EncodedExample:
    prompt_ids: list[int]
    response_ids: list[int]


def encode_example(loaded: LoadedModel, example: Example) -> EncodedExample:
    """Token ids of an example's prompt (chat template with assistant header) and response."""
    prompt = encode_prompt(loaded.tokenizer, example.messages)
    if not prompt:
        raise ValueError("an example's prompt is empty after the chat template; give a message")
    if example.response_ids is not None:
        response = [int(i) for i in example.response_ids]
    else:
        response = encode_response(loaded.tokenizer, example.response)
    return EncodedExample(prompt, response)


@dataclass
class CaptureResult:
    """Readouts of many examples.

    Attributes:
        layers: captured layers (block-output convention), in order.
        means: readout → group → float32 ``[len(layers), hidden]`` mean over that group's examples.
        counts: readout → group → examples that contributed (``response_avg`` skips empty answers).
        per_example: readout → ``[n_examples, len(layers), hidden]`` in input order, if kept
            (rows of examples with an empty response are zero for ``response_avg``).
        token_norm: float32 ``[len(layers)]`` mean L2 norm of the residual stream over all
            response tokens (prompt tokens when no response has any), i.e. a typical norm.
    """

    layers: list[int]
    means: dict[str, dict[str, torch.Tensor]]
    counts: dict[str, dict[str, int]]
    per_example: dict[str, torch.Tensor] | None
    token_norm: torch.Tensor


@dataclass
class _Accumulator:
    readouts: tuple[str, ...]
    layers: list[int]
    groups: list[str]
    hidden: int
    keep: bool
    n_examples: int
    keep_dtype: torch.dtype
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)
    per_example: dict[str, torch.Tensor] = field(default_factory=dict)
    norm_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    norm_count: int = 0
    prompt_norm_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    prompt_norm_count: int = 0

    def __post_init__(self) -> None:
        shape = (len(self.groups), len(self.layers), self.hidden)
        for name in self.readouts:
            self.sums[name] = torch.zeros(shape, dtype=torch.float32)
            self.counts[name] = torch.zeros(len(self.groups), dtype=torch.long)
            if self.keep:
                self.per_example[name] = torch.zeros(
                    (self.n_examples, len(self.layers), self.hidden), dtype=self.keep_dtype
                )
        self.norm_sum = torch.zeros(len(self.layers), dtype=torch.float64)
        self.prompt_norm_sum = torch.zeros(len(self.layers), dtype=torch.float64)


def capture(
    loaded: LoadedModel,
    examples: Sequence[Example],
    *,
    layers: Sequence[int] | None = None,
    readouts: Sequence[str] = READOUTS,
    groups: Sequence[str] | None = None,
    keep_per_example: bool = False,
    per_example_dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> CaptureResult:
    """Capture readouts of ``examples`` at ``layers`` (all of ``0..n`` by default).

    Args:
        loaded: the model and tokenizer.
        examples: (prompt messages, response) pairs.
        layers: layers to read; default all.
        readouts: any of ``response_avg``, ``prompt_avg``, ``prompt_last``.
        groups: a label per example (e.g. ``"pos"``/``"neg"``); means are kept per label.
            Default: one group ``"all"``.
        keep_per_example: also return every example's readouts (memory grows with N).
        batch_size: examples per forward pass; batches are formed from length-sorted examples.
        progress: called with the number of examples finished after each batch.
    """
    unknown = set(readouts) - set(READOUTS)
    if unknown:
        raise ValueError(f"unknown readouts {sorted(unknown)}; use {', '.join(READOUTS)}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    group_names, group_index = _group_index(groups, len(examples))
    acc = _Accumulator(
        tuple(readouts),
        resolve_layers(layers, n_layers(loaded.model)),
        group_names,
        loaded.hidden_size,
        keep_per_example,
        len(examples),
        per_example_dtype,
    )
    encoded = [encode_example(loaded, ex) for ex in examples]
    _capture_batches(loaded, encoded, acc, group_index, batch_size, progress)
    return _finish(acc)


def _capture_batches(
    loaded: LoadedModel,
    encoded: Sequence[EncodedExample],
    acc: _Accumulator,
    group_index: torch.Tensor,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> None:
    """Run length-sorted, left-padded batches of ``encoded`` into ``acc``."""
    model = loaded.model
    order = sorted(
        range(len(encoded)),
        key=lambda i: len(encoded[i].prompt_ids) + len(encoded[i].response_ids),
    )
    device = loaded.device
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = int(pad_id) if pad_id is not None else 0
    done = 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch_idx = order[start : start + batch_size]
            batch = [encoded[i] for i in batch_idx]
            ids, attention, prompt_lens, response_lens = _left_pad(batch, pad_id)
            masks = readout_masks(prompt_lens, response_lens, ids.shape[1])
            _run_batch(
                model,
                acc,
                ids.to(device),
                attention.to(device),
                masks,
                prompt_lens,
                torch.tensor(batch_idx, dtype=torch.long),
                group_index[batch_idx],
            )
            done += len(batch_idx)
            if progress is not None:
                progress(done)


def _group_index(groups: Sequence[str] | None, n: int) -> tuple[list[str], torch.Tensor]:
    """Distinct group names in order of appearance, and each example's group index ``[n]``."""
    labels = list(groups) if groups is not None else ["all"] * n
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} group labels for {n} examples")
    names = list(dict.fromkeys(labels))
    return names, torch.tensor([names.index(g) for g in labels], dtype=torch.long)


def _left_pad(
    batch: Sequence[EncodedExample], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`left_pad` on prompt + response; also the prompt and response lengths."""
    ids, attention, _ = left_pad([e.prompt_ids + e.response_ids for e in batch], pad_id)
    prompt_lens = torch.tensor([len(e.prompt_ids) for e in batch], dtype=torch.long)
    response_lens = torch.tensor([len(e.response_ids) for e in batch], dtype=torch.long)
    return ids, attention, prompt_lens, response_lens


def _run_batch(
    model: torch.nn.Module,
    acc: _Accumulator,
    ids: torch.Tensor,
    attention: torch.Tensor,
    masks: dict[str, torch.Tensor],
    prompt_lens: torch.Tensor,
    example_idx: torch.Tensor,
    group_idx: torch.Tensor,
) -> None:
    device = ids.device
    float_masks = {k: v.to(device=device, dtype=torch.float32) for k, v in masks.items()}
    counts = {k: v.sum(dim=1) for k, v in float_masks.items()}
    # Per batch, not per layer: denominators and which rows (and groups) have a readout at all.
    denominators = {k: c.clamp(min=1).unsqueeze(1) for k, c in counts.items()}
    valid = {k: (c > 0).cpu() for k, c in counts.items()}
    valid_groups = {k: group_idx[v] for k, v in valid.items()}
    for name in acc.readouts:
        groups = valid_groups[name]
        acc.counts[name].index_add_(0, groups, torch.ones_like(groups))
    response_mask = float_masks["response_avg"]
    prompt_mask = float_masks["prompt_avg"]

    def reduce(position: int, hidden: torch.Tensor) -> None:
        h = hidden.float()
        for name in acc.readouts:
            totals = torch.einsum("bs,bsh->bh", float_masks[name], h)
            rows = (totals / denominators[name]).cpu()
            acc.sums[name][:, position].index_add_(0, valid_groups[name], rows[valid[name]])
            if acc.keep:
                acc.per_example[name][example_idx, position] = rows.to(acc.keep_dtype)
        norms = h.norm(dim=-1)
        acc.norm_sum[position] += float((norms * response_mask).sum())
        acc.prompt_norm_sum[position] += float((norms * prompt_mask).sum())

    read_layers(model, acc.layers, reduce, ids, attention, prompt_lens)
    acc.norm_count += int(response_mask.sum())
    acc.prompt_norm_count += int(prompt_mask.sum())


def read_layers(
    model: torch.nn.Module,
    layers: Sequence[int],
    read: Callable[[int, torch.Tensor], None],
    ids: torch.Tensor,
    attention: torch.Tensor,
    prompt_lengths: torch.Tensor,
) -> None:
    """One teacher-forced forward pass that calls ``read(i, hidden)`` at ``layers[i]``.

    ``ids`` and ``attention`` are ``[batch, seq]`` (left-padded prompt + response); position ids
    count from each row's first real token, as in generation, so absolute-position models (GPT-2)
    read a left-padded row exactly as they read it alone. Only the block-owning module runs, and
    it stops after the deepest layer; the hooks are removed afterwards, also on error.
    """

    def reader(index: int) -> LayerHook:
        def hook(hidden: torch.Tensor, call: ForwardCall) -> None:
            read(index, hidden)

        return hook

    hooks = {layer: [reader(index)] for index, layer in enumerate(layers)}
    handle: HookHandle
    with (
        install_hooks(model, hooks, stop_after=max(layers)) as handle,
        torch.no_grad(),
        teacher_forcing(model, prompt_lengths),  # this handle and any steering on the model
    ):
        run_until_stopped(
            handle.owner,
            input_ids=ids,
            attention_mask=attention,
            position_ids=position_ids(attention),
            use_cache=False,
        )


def _finish(acc: _Accumulator) -> CaptureResult:
    means: dict[str, dict[str, torch.Tensor]] = {}
    counts: dict[str, dict[str, int]] = {}
    for name in acc.readouts:
        means[name] = {}
        counts[name] = {}
        for g, group in enumerate(acc.groups):
            n = int(acc.counts[name][g])
            counts[name][group] = n
            means[name][group] = acc.sums[name][g] / max(n, 1)
    if acc.norm_count > 0:
        token_norm = (acc.norm_sum / acc.norm_count).float()
    else:
        token_norm = (acc.prompt_norm_sum / max(acc.prompt_norm_count, 1)).float()
    return CaptureResult(
        layers=acc.layers,
        means=means,
        counts=counts,
        per_example=acc.per_example if acc.keep else None,
        token_norm=token_norm,
    )


@dataclass
class TokenActivations:
    """Per-token residual stream of one example.

    Attributes:
        token_ids: ``[seq]`` prompt then response ids.
        hidden: float32 ``[len(layers), seq, hidden]``.
        layers: the captured layers.
        prompt_length: number of prompt tokens (the rest are response tokens).
    """

    token_ids: list[int]
    hidden: torch.Tensor
    layers: list[int]
    prompt_length: int


def capture_tokens(
    loaded: LoadedModel, example: Example, *, layers: Sequence[int] | None = None
) -> TokenActivations:
    """Every token's residual stream for one example (no padding), for monitoring."""
    encoded = encode_example(loaded, example)
    selected = resolve_layers(layers, n_layers(loaded.model))
    ids = torch.tensor([encoded.prompt_ids + encoded.response_ids], device=loaded.device)
    out = torch.zeros((len(selected), ids.shape[1], loaded.hidden_size), dtype=torch.float32)

    def store(position: int, hidden: torch.Tensor) -> None:
        out[position] = hidden[0].float().cpu()

    prompt_lens = torch.tensor([len(encoded.prompt_ids)])
    read_layers(loaded.model, selected, store, ids, torch.ones_like(ids), prompt_lens)
    return TokenActivations(
        encoded.prompt_ids + encoded.response_ids, out, selected, len(encoded.prompt_ids)
    )

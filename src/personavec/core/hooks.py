"""The one hook runtime: run callables on the residual stream at chosen layers.

Steering, monitoring and activation capture are all clients of :func:`install_hooks`:

* **Where.** Layers follow the block-output convention (:mod:`personavec.core.layers`): layer
  ``0`` is a forward *pre*-hook on block 1's input (the embedding output), layer ``L ≥ 1`` a
  forward hook on block ``L``'s output.
* **What each call looks like.** A forward pre-hook on the module that owns the blocks (the one
  that receives ``attention_mask``) reads every forward call into a :class:`ForwardCall`: its
  token ids, which tokens are real (not padding), the KV-cache length and, for teacher-forced
  passes, each row's prompt length. Prompt lengths are an explicit input of the runtime:
  :meth:`HookHandle.teacher_forcing` sets them on one handle, :func:`teacher_forcing` on every
  handle installed on a model; nothing reaches a hook through ambient state. Positions are per
  sequence, so a left-padded batch under cached decoding looks, row by row, exactly like each
  request alone.
* **What a hook does.** A :data:`LayerHook` is ``hook(hidden, call) -> hidden | None``:
  ``hidden`` is ``[batch, seq, hidden]``; return a new tensor to replace it (later hooks at the
  same layer, and the rest of the model, see the new one) or ``None`` to leave it.

Hooks registered by one :class:`HookHandle` run in list order at each layer; separate handles run
in the order they were installed. :meth:`HookHandle.remove` (or leaving the ``with`` block)
removes every torch hook, also when the body raised.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from personavec.core.layers import (
    block_output_tensor,
    check_layer,
    find_blocks,
    replace_block_output,
)
from personavec.core.positions import (
    PositionMode,
    real_token_mask,
    relative_positions,
    steering_mask,
)

PromptLengths = torch.Tensor | Sequence[int]
"""``[batch]`` prompt tokens per row of a teacher-forced forward pass."""


@contextlib.contextmanager
def teacher_forcing(model: nn.Module, prompt_lengths: PromptLengths) -> Iterator[None]:
    """Declare each row's prompt length to every hook runtime installed on ``model``.

    For forward passes that hold prompt *and* response: inside this block, the prefill
    (non-cached) calls seen by those handles split their tokens at these lengths, counted from
    each row's first real token: ``prompt`` positions are the first ``prompt_lengths[b]`` real
    tokens, ``response`` positions the rest (plus the last prompt token). Without it a prefill
    call is all prompt. Only handles already installed on ``model`` (or on a module inside it)
    when the block starts are told (:meth:`HookHandle.teacher_forcing` on each); other models'
    hooks are unaffected.

    Args:
        model: the model (or a module holding its decoder blocks) about to run.
        prompt_lengths: ``[batch]`` prompt tokens per row.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("teacher_forcing(model, prompt_lengths): pass the model first")
    with contextlib.ExitStack() as stack:
        for handle in [h for h in list(_LIVE) if h.acts_on(model)]:
            stack.enter_context(handle.teacher_forcing(prompt_lengths))
        yield


@dataclass
class ForwardCall:
    """One forward call of the block-owning module, per sequence.

    Attributes:
        ids: token ids ``[batch, seq]`` of this call, or None when called with embeddings.
        real: bool ``[batch, seq]``, real (non-padding) tokens of this call.
        attention: the full 2-D attention mask ``[batch, past + seq]``, or None.
        past_len: tokens already in the KV cache (0 for a prefill).
        prompt_lengths: long ``[batch]`` given to :meth:`HookHandle.teacher_forcing`, or None.
        tracked: False for a stand-in made when a block runs outside a tracked call (or with a
            shape the call does not have); such a call is treated as one all-real prefill.
    """

    ids: torch.Tensor | None
    real: torch.Tensor
    attention: torch.Tensor | None
    past_len: int
    prompt_lengths: torch.Tensor | None = None
    tracked: bool = True
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def is_prefill(self) -> bool:
        """True when the call starts its sequences (no KV cache yet)."""
        return self.past_len == 0

    def mask(self, mode: PositionMode) -> torch.Tensor:
        """Bool ``[batch, seq]`` steering positions of ``mode`` (cached per call)."""
        if mode not in self._cache:
            self._cache[mode] = steering_mask(
                mode, self.real, is_prefill=self.is_prefill, prompt_lengths=self.prompt_lengths
            )
        return self._cache[mode]

    def rows_mask(self, mode: PositionMode, rows: tuple[int, ...] | None) -> torch.Tensor:
        """:meth:`mask` restricted to batch ``rows`` (all rows when ``None``; cached per call).

        Lets one forward pass serve requests with different settings: each setting names the
        rows it applies to, and the other rows are left bit-identical.
        """
        if rows is None:
            return self.mask(mode)
        key = f"{mode}:rows:{','.join(map(str, rows))}"
        if key not in self._cache:
            selected = torch.zeros(self.real.shape[0], dtype=torch.bool, device=self.real.device)
            selected[[r for r in rows if r < self.real.shape[0]]] = True
            self._cache[key] = self.mask(mode) & selected.unsqueeze(1)
        return self._cache[key]

    @property
    def positions(self) -> torch.Tensor:
        """Long ``[batch, seq]``: index of each token in its own sequence (0 = first real token,
        counting tokens already in the cache); meaningless on padding."""
        if "positions" not in self._cache:
            real = self.real
            if self.attention is not None:
                past = self.attention[:, : self.attention.shape[1] - real.shape[1]]
                past_real = past.long().sum(dim=1).to(real.device)
            else:
                past_real = torch.full(
                    (real.shape[0],), self.past_len, dtype=torch.long, device=real.device
                )
            self._cache["positions"] = past_real.unsqueeze(1) + relative_positions(real)
        return self._cache["positions"]


def _cache_length(past: Any) -> int:
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    if isinstance(past, tuple | list) and past and isinstance(past[0], tuple | list):
        return int(past[0][0].shape[-2])
    return 0


def _cache_argument(kwargs: Mapping[str, Any]) -> Any:
    """The KV cache a forward call received: ``cache`` (transformers' name since 5.2x, which
    also drops an all-ones ``attention_mask``) or the older ``past_key_values``."""
    for name in ("cache", "past_key_values", "past_key_value"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def read_call(
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    prompt_lengths: torch.Tensor | None = None,
) -> ForwardCall | None:
    """A :class:`ForwardCall` from the block owner's forward arguments (and the prompt lengths
    of a teacher-forced pass); None without tokens."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    reference = ids if isinstance(ids, torch.Tensor) else embeds
    if not isinstance(reference, torch.Tensor):
        return None
    batch, seq = int(reference.shape[0]), int(reference.shape[1])
    attention = kwargs.get("attention_mask")
    past_len = _cache_length(_cache_argument(kwargs))
    if isinstance(attention, torch.Tensor) and attention.ndim == 2:
        current: torch.Tensor | None = attention[:, -seq:]
        past_len = max(past_len, int(attention.shape[1]) - seq)
    else:
        current, attention = None, None
    real = real_token_mask(current, (batch, seq)).to(reference.device)
    token_ids = ids if isinstance(ids, torch.Tensor) else None
    return ForwardCall(token_ids, real, attention, past_len, prompt_lengths)


def owner_of_blocks(model: nn.Module, blocks: nn.ModuleList) -> nn.Module:
    """The module whose forward loops over ``blocks`` (it receives ``attention_mask``)."""
    for module in model.modules():
        for child in module.children():
            if child is blocks:
                return module
    return model


LayerHook = Callable[[torch.Tensor, ForwardCall], "torch.Tensor | None"]
"""``hook(hidden [batch, seq, hidden], call) -> new hidden, or None to leave it``."""

CallCallback = Callable[[ForwardCall | None], None]
"""Called at the start and end of each forward call (None when the call has no token input)."""


class StopForward(Exception):
    """Raised after the hooks at ``stop_after`` ran, to skip the remaining blocks and the head.

    Catch it with :func:`run_until_stopped`.
    """


def run_until_stopped(module: nn.Module, **inputs: Any) -> Any | None:
    """``module(**inputs)``; None when a hook stopped the pass with :class:`StopForward`."""
    try:
        return module(**inputs)
    except StopForward:
        return None


class HookHandle:
    """Installed hooks on a model; :meth:`remove` (or leaving the ``with`` block) undoes them.

    Attributes:
        blocks: the decoder blocks.
        owner: the module that runs them (whose calls are read into :class:`ForwardCall`).
        call: the forward call in flight, or None between calls.
        prompt_lengths: long ``[batch]`` for teacher-forced passes (see
            :meth:`teacher_forcing`), or None: a prefill call is all prompt.
    """

    def __init__(
        self,
        model: nn.Module,
        hooks: Mapping[int, Sequence[LayerHook]],
        *,
        blocks_path: str | None = None,
        on_start: CallCallback | None = None,
        on_end: CallCallback | None = None,
        stop_after: int | None = None,
    ) -> None:
        self.model = model
        self.blocks = find_blocks(model, blocks_path)
        self.owner = owner_of_blocks(model, self.blocks)
        self.call: ForwardCall | None = None
        self.prompt_lengths: torch.Tensor | None = None
        self._on_start, self._on_end = on_start, on_end
        self._handles: list[RemovableHandle] = []
        n = len(self.blocks)
        layers = {check_layer(layer, n): list(items) for layer, items in hooks.items()}
        if stop_after is not None:
            layers.setdefault(check_layer(stop_after, n), [])
        try:
            self._handles.append(
                self.owner.register_forward_pre_hook(self._start, with_kwargs=True)
            )
            self._handles.append(self.owner.register_forward_hook(self._end))
            for layer, items in sorted(layers.items()):
                self._install(layer, items, stop=layer == stop_after)
        except BaseException:
            self.remove()
            raise
        _LIVE.add(self)

    @contextlib.contextmanager
    def teacher_forcing(self, prompt_lengths: PromptLengths) -> Iterator[None]:
        """Within the block, prefill calls split each row at ``prompt_lengths[b]`` real tokens
        (see :func:`teacher_forcing`); the previous lengths come back afterwards."""
        previous = self.prompt_lengths
        self.prompt_lengths = torch.as_tensor(prompt_lengths, dtype=torch.long)
        try:
            yield
        finally:
            self.prompt_lengths = previous

    def acts_on(self, model: nn.Module) -> bool:
        """True when these hooks sit on ``model`` (the model given, the blocks' owner, or a
        module inside ``model``)."""
        if model is self.model or model is self.owner:
            return True
        return any(module is self.owner for module in model.modules())

    def _install(self, layer: int, items: list[LayerHook], *, stop: bool) -> None:
        def run(hidden: torch.Tensor) -> torch.Tensor | None:
            call = self.current_call(hidden)
            changed = None
            for item in items:
                result = item(hidden if changed is None else changed, call)
                if result is not None:
                    changed = result
            if stop:
                raise StopForward
            return changed

        if layer == 0:

            def pre_hook(
                module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
                if "hidden_states" in kwargs:
                    changed = run(kwargs["hidden_states"])
                    return None if changed is None else (args, {**kwargs, "hidden_states": changed})
                changed = run(args[0])
                return None if changed is None else ((changed, *args[1:]), kwargs)

            handle = self.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:

            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                changed = run(block_output_tensor(output))
                return None if changed is None else replace_block_output(output, changed)

            handle = self.blocks[layer - 1].register_forward_hook(hook)
        self._handles.append(handle)

    def current_call(self, hidden: torch.Tensor) -> ForwardCall:
        """The call ``hidden`` belongs to; an untracked all-real prefill stand-in when the block
        runs outside a tracked call or with another shape (kept for the rest of the call)."""
        call = self.call
        if call is None or tuple(call.real.shape) != tuple(hidden.shape[:2]):
            real = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            call = ForwardCall(None, real, None, 0, self.prompt_lengths, tracked=False)
            self.call = call
        return call

    def _start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.call = read_call(args, kwargs, self.prompt_lengths)
        if self._on_start is not None:
            self._on_start(self.call)

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        call, self.call = self.call, None
        if self._on_end is not None:
            self._on_end(call)

    def remove(self) -> None:
        """Remove every hook; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.call = None
        _LIVE.discard(self)

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


_LIVE: weakref.WeakSet[HookHandle] = weakref.WeakSet()
"""Installed, not yet removed handles (what :func:`teacher_forcing` looks through)."""


def install_hooks(
    model: nn.Module,
    hooks: Mapping[int, Sequence[LayerHook]],
    *,
    blocks_path: str | None = None,
    on_start: CallCallback | None = None,
    on_end: CallCallback | None = None,
    stop_after: int | None = None,
) -> HookHandle:
    """Run ``hooks[L]`` on the residual stream at each layer ``L`` of ``model``.

    Args:
        model: a transformers causal LM (or a peft wrapper around one).
        hooks: layer → hooks run in order there (block-output convention, ``0..n``).
        blocks_path: dotted path to the decoder blocks when not found automatically.
        on_start: called with each new :class:`ForwardCall` (None without token input).
        on_end: called with the finished call when the block owner returns (not after
            :class:`StopForward`).
        stop_after: raise :class:`StopForward` once the hooks at this layer ran (capture uses it
            to skip the deeper blocks and the LM head).

    Raises:
        SteeringError: a layer out of range, or no decoder blocks found.
    """
    return HookHandle(
        model,
        hooks,
        blocks_path=blocks_path,
        on_start=on_start,
        on_end=on_end,
        stop_after=stop_after,
    )

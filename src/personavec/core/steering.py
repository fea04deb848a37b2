"""Steering: change the residual stream at chosen layers and token positions.

Operators (at layer ``L``, on the selected positions only):

* ``add``:    ``h ← h + coef · v``
* ``ablate``: ``h ← h − (h · v̂) v̂``  (``coef`` is ignored)

Positions are tracked per sequence (see :mod:`personavec.core.positions`): a forward pre-hook on the
module that owns the decoder blocks reads each call's ``attention_mask`` and the KV-cache length,
so a left-padded batch under cached decoding is steered exactly like each request alone.

Use :func:`steer` (context manager) or :func:`apply_steering` (returns a handle to ``remove()``).
On exit the model is exactly as before: hooks are removed even when the body raises.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from personavec.core.layers import (
    block_output_tensor,
    check_layer,
    find_blocks,
    replace_block_output,
)
from personavec.core.positions import POSITION_MODES, PositionMode, real_token_mask, steering_mask
from personavec.errors import SteeringError

Operator = Literal["add", "ablate"]
OPERATORS: tuple[str, ...] = get_args(Operator)
MultiLayerMode = Literal["stack", "incremental"]

# Prompt lengths for teacher-forced forward passes that hold prompt *and* response tokens.
_PROMPT_LENGTHS: ContextVar[torch.Tensor | None] = ContextVar("prompt_lengths", default=None)


@dataclass(frozen=True)
class Intervention:
    """One change at one layer.

    Attributes:
        layer: layer under the block-output convention (0 = embeddings, L = output of block L).
        vector: ``[hidden]``; added as ``coef · vector`` (``add``) or used as a direction
            (``ablate``).
        coef: multiplier for ``add``; ignored by ``ablate``.
        op: ``"add"`` or ``"ablate"``.
        positions: ``"all"``, ``"prompt"`` or ``"response"``.
    """

    layer: int
    vector: torch.Tensor
    coef: float = 1.0
    op: Operator = "add"
    positions: PositionMode = "all"

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise SteeringError(f"unknown operator {self.op!r}; use add or ablate")
        if self.positions not in POSITION_MODES:
            raise SteeringError(
                f"unknown positions {self.positions!r}; use {', '.join(POSITION_MODES)}"
            )
        if not math.isfinite(self.coef):
            raise SteeringError(f"coefficient {self.coef!r} is not a finite number; pass one")
        if self.vector.ndim != 1:
            shape = tuple(self.vector.shape)
            raise SteeringError(f"steering vector must be 1-D [hidden], got {shape}")
        if not torch.isfinite(self.vector).all():
            raise SteeringError("steering vector contains NaN or inf; check the vector file")
        if self.op == "ablate" and float(self.vector.norm()) == 0.0:
            raise SteeringError(f"cannot ablate a zero vector at layer {self.layer}")


@dataclass
class _CallState:
    """What the current forward call looks like: real tokens and whether it is a prefill."""

    real: torch.Tensor  # bool [batch, seq]
    is_prefill: bool
    prompt_lengths: torch.Tensor | None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def mask(self, mode: PositionMode) -> torch.Tensor:
        if mode not in self.masks:
            self.masks[mode] = steering_mask(
                mode, self.real, is_prefill=self.is_prefill, prompt_lengths=self.prompt_lengths
            )
        return self.masks[mode]


def _owner_of_blocks(model: nn.Module, blocks: nn.ModuleList) -> nn.Module:
    """The module whose forward loops over ``blocks`` (it receives ``attention_mask``)."""
    for module in model.modules():
        for child in module.children():
            if child is blocks:
                return module
    return model


def _cache_length(past: Any) -> int:
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    if isinstance(past, tuple | list) and past and isinstance(past[0], tuple | list):
        return int(past[0][0].shape[-2])
    return 0


@dataclass
class CallInputs:
    """What a forward call of the block-owning module is given, per sequence.

    Attributes:
        ids: token ids ``[batch, seq]`` of this call, or None when called with embeddings.
        real: bool ``[batch, seq]``, real (non-padding) tokens of this call.
        attention: the full 2-D attention mask ``[batch, past + seq]``, or None.
        past_len: tokens already in the KV cache (0 for a prefill).
    """

    ids: torch.Tensor | None
    real: torch.Tensor
    attention: torch.Tensor | None
    past_len: int


def read_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallInputs | None:
    """Inputs of one forward call (for hooks that track positions); None without token inputs."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    reference = ids if isinstance(ids, torch.Tensor) else embeds
    if not isinstance(reference, torch.Tensor):
        return None
    batch, seq = int(reference.shape[0]), int(reference.shape[1])
    attention = kwargs.get("attention_mask")
    past_len = _cache_length(kwargs.get("past_key_values", kwargs.get("past_key_value")))
    if isinstance(attention, torch.Tensor) and attention.ndim == 2:
        current: torch.Tensor | None = attention[:, -seq:]
        past_len = max(past_len, int(attention.shape[1]) - seq)
    else:
        current, attention = None, None
    real = real_token_mask(current, (batch, seq)).to(reference.device)
    return CallInputs(ids if isinstance(ids, torch.Tensor) else None, real, attention, past_len)


class SteeringHandle:
    """Active steering on a model; call :meth:`remove` (or leave the ``with`` block) to undo."""

    def __init__(
        self, model: nn.Module, interventions: Sequence[Intervention], blocks_path: str | None
    ) -> None:
        self.model = model
        self.interventions = list(interventions)
        self._handles: list[RemovableHandle] = []
        self._state: _CallState | None = None
        blocks = find_blocks(model, blocks_path)
        n = len(blocks)
        by_layer: dict[int, list[Intervention]] = {}
        for item in self.interventions:
            check_layer(item.layer, n)
            by_layer.setdefault(item.layer, []).append(item)
        owner = _owner_of_blocks(model, blocks)
        try:
            self._handles.append(
                owner.register_forward_pre_hook(self._on_call_start, with_kwargs=True)
            )
            self._handles.append(owner.register_forward_hook(self._on_call_end))
            for layer, items in sorted(by_layer.items()):
                prepared = [self._prepare(item, blocks) for item in items]
                if layer == 0:
                    hook = self._make_pre_hook(prepared)
                    self._handles.append(
                        blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
                    )
                else:
                    self._handles.append(
                        blocks[layer - 1].register_forward_hook(self._make_hook(prepared))
                    )
        except BaseException:
            self.remove()
            raise

    # ---- set-up ---------------------------------------------------------------------------
    @staticmethod
    def _prepare(item: Intervention, blocks: nn.ModuleList) -> Intervention:
        param = next(blocks.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        vector = item.vector.detach().to(device=device, dtype=torch.float32)
        if item.op == "ablate":
            vector = vector / vector.norm()
        else:
            vector = (vector * item.coef).to(dtype)
        return Intervention(item.layer, vector, item.coef, item.op, item.positions)

    # ---- hooks ----------------------------------------------------------------------------
    def _on_call_start(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        call = read_call(args, kwargs)
        self._state = (
            None
            if call is None
            else _CallState(call.real, call.past_len == 0, _PROMPT_LENGTHS.get())
        )

    def _on_call_end(self, module: nn.Module, args: Any, output: Any) -> None:
        self._state = None

    def _mask_for(self, hidden: torch.Tensor, mode: PositionMode) -> torch.Tensor:
        state = self._state
        if state is None or state.real.shape != hidden.shape[:2]:
            # Called outside a tracked forward (e.g. a block run directly): treat as one prefill.
            real = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            state = _CallState(real, True, _PROMPT_LENGTHS.get())
            self._state = state
        return state.mask(mode)

    def _apply(self, hidden: torch.Tensor, items: Sequence[Intervention]) -> torch.Tensor:
        for item in items:
            mask = self._mask_for(hidden, item.positions).unsqueeze(-1)
            if item.op == "add":
                hidden = hidden + mask.to(hidden.dtype) * item.vector
            else:
                unit = item.vector
                component = (hidden.float() @ unit).unsqueeze(-1)
                removal = (mask.float() * component * unit).to(hidden.dtype)
                hidden = hidden - removal
        return hidden

    def _make_hook(self, items: Sequence[Intervention]) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            return replace_block_output(output, self._apply(block_output_tensor(output), items))

        return hook

    def _make_pre_hook(self, items: Sequence[Intervention]) -> Any:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if "hidden_states" in kwargs:
                kwargs = {**kwargs, "hidden_states": self._apply(kwargs["hidden_states"], items)}
            else:
                args = (self._apply(args[0], items), *args[1:])
            return args, kwargs

        return hook

    # ---- teardown -------------------------------------------------------------------------
    def remove(self) -> None:
        """Remove every hook; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._state = None

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_steering(
    model: nn.Module,
    interventions: Sequence[Intervention] | Intervention,
    *,
    blocks_path: str | None = None,
) -> SteeringHandle:
    """Start steering ``model``; returns a handle whose ``remove()`` undoes it."""
    items = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    return SteeringHandle(model, items, blocks_path)


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


@contextlib.contextmanager
def teacher_forcing(prompt_lengths: torch.Tensor | Sequence[int]) -> Iterator[None]:
    """Mark the prompt length of each row for prefill calls that hold prompt *and* response.

    Inside this block, ``prompt`` and ``response`` positions of a non-cached forward pass are split
    at these lengths (counted from each row's first real token), instead of treating the whole
    input as prompt.
    """
    lengths = torch.as_tensor(prompt_lengths, dtype=torch.long)
    token = _PROMPT_LENGTHS.set(lengths)
    try:
        yield
    finally:
        _PROMPT_LENGTHS.reset(token)

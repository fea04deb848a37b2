"""Pure functions that build token-position masks.

All masks are boolean tensors ``[batch, seq]`` over the tokens of *one forward call*. They are
aware of padding on either side (a token is real where the attention mask is 1) and of KV-cache
decoding, where a forward call holds only the newly generated token(s) of each sequence.

Steering positions (DESIGN.md):

* ``all``: every real position, prompt and generated;
* ``prompt``: prompt positions only (nothing during cached decode steps);
* ``response``: generated positions plus the last prompt token, whose output predicts the first
  response token (as in the paper's reference code).

Readouts for a (prompt, response) pair: ``prompt_avg`` (mean over prompt tokens),
``response_avg`` (mean over response tokens), ``prompt_last`` (the last prompt token).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

PositionMode = Literal["all", "prompt", "response"]
POSITION_MODES: tuple[str, ...] = get_args(PositionMode)

Readout = Literal["response_avg", "prompt_avg", "prompt_last"]
READOUTS: tuple[str, ...] = get_args(Readout)


def real_token_mask(attention_mask: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    """Boolean ``[batch, seq]`` mask of real (non-padding) tokens; all True without a mask."""
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.bool)
    return attention_mask.bool()


def relative_positions(real: torch.Tensor) -> torch.Tensor:
    """Index of each real token within its own sequence (0 = first real token); -1 on padding.

    Args:
        real: bool ``[batch, seq]``.
    Returns:
        long ``[batch, seq]``.
    """
    counts = real.long().cumsum(dim=1) - 1
    return torch.where(real, counts, torch.full_like(counts, -1))


def last_real_index(real: torch.Tensor) -> torch.Tensor:
    """Column of the last real token in each row ``[batch]`` (-1 for an all-padding row)."""
    seq = real.shape[1]
    columns = torch.arange(seq, device=real.device).expand_as(real)
    return torch.where(real, columns, torch.full_like(columns, -1)).max(dim=1).values


def steering_mask(
    mode: PositionMode,
    real: torch.Tensor,
    *,
    is_prefill: bool,
    prompt_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which positions of one forward call a steering intervention touches.

    Args:
        mode: ``all``, ``prompt`` or ``response``.
        real: bool ``[batch, seq]`` real-token mask of the tokens in this call.
        is_prefill: True when the call starts each sequence (no KV cache yet); False for cached
            decode steps, whose tokens are all generated.
        prompt_lengths: long ``[batch]``, only for prefill calls that hold prompt *and* response
            (teacher forcing): the number of prompt tokens per row. Default: the whole call is
            prompt.
    Returns:
        bool ``[batch, seq]``.
    """
    if mode not in POSITION_MODES:
        raise ValueError(f"unknown positions {mode!r}; use one of {', '.join(POSITION_MODES)}")
    if mode == "all":
        return real
    if not is_prefill:
        return real if mode == "response" else torch.zeros_like(real)
    rel = relative_positions(real)
    if prompt_lengths is None:
        lengths = real.long().sum(dim=1)
    else:
        lengths = prompt_lengths.to(device=real.device, dtype=torch.long)
    lengths = lengths.unsqueeze(1)
    if mode == "prompt":
        return real & (rel < lengths)
    return real & (rel >= lengths - 1)


def readout_masks(
    prompt_lengths: torch.Tensor, response_lengths: torch.Tensor, seq_len: int
) -> dict[str, torch.Tensor]:
    """Readout masks for a left-padded batch laid out as ``[pad…, prompt…, response…]``.

    Args:
        prompt_lengths: long ``[batch]``, tokens in each prompt (≥ 1).
        response_lengths: long ``[batch]``, tokens in each response (≥ 0).
        seq_len: padded length of the batch.
    Returns:
        ``{"prompt_avg", "response_avg", "prompt_last"}`` → bool ``[batch, seq_len]``.
    """
    columns = torch.arange(seq_len).unsqueeze(0)
    response_start = (seq_len - response_lengths).unsqueeze(1)
    prompt_start = response_start - prompt_lengths.unsqueeze(1)
    prompt = (columns >= prompt_start) & (columns < response_start)
    response = columns >= response_start
    last = columns == (response_start - 1)
    return {"prompt_avg": prompt, "response_avg": response, "prompt_last": last}

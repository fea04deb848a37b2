"""Left padding of token sequences into one batch, with generation-style position ids."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def position_ids(attention: torch.Tensor) -> torch.Tensor:
    """Position of each token counted from its row's first real token (0 on padding).

    Args:
        attention: ``[batch, width]`` attention mask (1 = real token).
    Returns:
        long ``[batch, width]``.
    """
    return (attention.long().cumsum(dim=1) - 1).clamp(min=0)


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token sequences into one batch.

    Returns ``(input_ids, attention_mask, position_ids)``, long tensors of shape
    ``[batch, width]`` where ``width`` is the longest sequence. Position ids count from each
    row's first real token (0 on padding), as in generation, so absolute-position models (GPT-2)
    read a left-padded row exactly as they read it alone.
    """
    if not sequences:
        raise ValueError("left_pad needs at least one sequence")
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            attention[row, width - len(seq) :] = 1
    return ids, attention, position_ids(attention)

"""Position masks (core/positions.py) against masks written out by hand."""

from __future__ import annotations

import pytest
import torch

from personavec.core.positions import (
    last_real_index,
    readout_masks,
    real_token_mask,
    relative_positions,
    steering_mask,
)


def t(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# A left-padded prefill batch: row 0 has one pad then 3 tokens, row 1 has 4 tokens.
LEFT = t([[0, 1, 1, 1], [1, 1, 1, 1]])
# Right padding (e.g. a tokenizer set to pad on the right): row 0 has 2 tokens.
RIGHT = t([[1, 1, 0, 0], [1, 1, 1, 1]])
# A cached decode step: one new token per row.
DECODE = t([[1], [1]])

CASES = [
    # (mode, real, is_prefill, prompt_lengths, expected)
    ("all", LEFT, True, None, [[0, 1, 1, 1], [1, 1, 1, 1]]),
    ("prompt", LEFT, True, None, [[0, 1, 1, 1], [1, 1, 1, 1]]),
    ("response", LEFT, True, None, [[0, 0, 0, 1], [0, 0, 0, 1]]),
    ("all", RIGHT, True, None, [[1, 1, 0, 0], [1, 1, 1, 1]]),
    ("prompt", RIGHT, True, None, [[1, 1, 0, 0], [1, 1, 1, 1]]),
    ("response", RIGHT, True, None, [[0, 1, 0, 0], [0, 0, 0, 1]]),
    ("all", DECODE, False, None, [[1], [1]]),
    ("prompt", DECODE, False, None, [[0], [0]]),
    ("response", DECODE, False, None, [[1], [1]]),
    # Teacher forcing: prompt lengths 2 and 3 (counted from each row's first real token).
    ("all", LEFT, True, [2, 3], [[0, 1, 1, 1], [1, 1, 1, 1]]),
    ("prompt", LEFT, True, [2, 3], [[0, 1, 1, 0], [1, 1, 1, 0]]),
    # response = generated tokens plus the last prompt token.
    ("response", LEFT, True, [2, 3], [[0, 0, 1, 1], [0, 0, 1, 1]]),
    # A one-token prompt: only that token is prompt; it also opens the response.
    ("prompt", LEFT, True, [1, 1], [[0, 1, 0, 0], [1, 0, 0, 0]]),
    ("response", LEFT, True, [1, 1], [[0, 1, 1, 1], [1, 1, 1, 1]]),
    # The whole row is prompt: response is its last token only.
    ("response", LEFT, True, [3, 4], [[0, 0, 0, 1], [0, 0, 0, 1]]),
]


@pytest.mark.parametrize(("mode", "real", "is_prefill", "lengths", "expected"), CASES)
def test_steering_mask_by_hand(
    mode: str,
    real: torch.Tensor,
    is_prefill: bool,
    lengths: list[int] | None,
    expected: list[list[int]],
) -> None:
    prompt_lengths = None if lengths is None else torch.tensor(lengths)
    got = steering_mask(mode, real, is_prefill=is_prefill, prompt_lengths=prompt_lengths)  # type: ignore[arg-type]
    assert got.dtype == torch.bool
    assert got.tolist() == t(expected).tolist()


def test_steering_mask_never_touches_padding() -> None:
    for mode in ("all", "prompt", "response"):
        for lengths in (None, torch.tensor([1, 1]), torch.tensor([2, 3])):
            got = steering_mask(mode, LEFT, is_prefill=True, prompt_lengths=lengths)  # type: ignore[arg-type]
            assert not got[0, 0]


def test_steering_mask_is_per_sequence() -> None:
    """A row's mask is the same alone or in a left-padded batch (shifted by its padding)."""
    one = t([[1, 1, 1]])
    alone = steering_mask("response", one, is_prefill=True, prompt_lengths=torch.tensor([2]))
    batched = steering_mask("response", LEFT, is_prefill=True, prompt_lengths=torch.tensor([2, 3]))
    assert batched[0, 1:].tolist() == alone[0].tolist() == [False, True, True]


def test_steering_mask_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown positions 'middle'"):
        steering_mask("middle", LEFT, is_prefill=True)  # type: ignore[arg-type]


def test_helpers_by_hand() -> None:
    assert real_token_mask(None, (2, 3)).tolist() == [[True] * 3] * 2
    assert real_token_mask(torch.tensor([[0, 1]]), (1, 2)).tolist() == [[False, True]]
    assert relative_positions(LEFT).tolist() == [[-1, 0, 1, 2], [0, 1, 2, 3]]
    assert relative_positions(RIGHT).tolist() == [[0, 1, -1, -1], [0, 1, 2, 3]]
    assert last_real_index(RIGHT).tolist() == [1, 3]
    assert last_real_index(t([[0, 0], [0, 1]])).tolist() == [-1, 1]


def test_readout_masks_by_hand() -> None:
    # Row 0: 2 prompt + 1 response tokens, 2 pads; row 1: 3 prompt + 2 response, no pad.
    masks = readout_masks(torch.tensor([2, 3]), torch.tensor([1, 2]), 5)
    assert set(masks) == {"prompt_avg", "response_avg", "prompt_last"}
    assert masks["prompt_avg"].tolist() == t([[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]).tolist()
    assert masks["response_avg"].tolist() == t([[0, 0, 0, 0, 1], [0, 0, 0, 1, 1]]).tolist()
    assert masks["prompt_last"].tolist() == t([[0, 0, 0, 1, 0], [0, 0, 1, 0, 0]]).tolist()


def test_readout_masks_empty_response() -> None:
    masks = readout_masks(torch.tensor([3, 1]), torch.tensor([0, 0]), 4)
    assert masks["prompt_avg"].tolist() == t([[0, 1, 1, 1], [0, 0, 0, 1]]).tolist()
    assert not masks["response_avg"].any()
    assert masks["prompt_last"].tolist() == t([[0, 0, 0, 1], [0, 0, 0, 1]]).tolist()
    # Exactly one prompt_last per row, and prompt / response never overlap.
    both = readout_masks(torch.tensor([1, 2, 4]), torch.tensor([3, 0, 2]), 6)
    assert both["prompt_last"].sum(1).tolist() == [1, 1, 1]
    assert not (both["prompt_avg"] & both["response_avg"]).any()
    assert both["prompt_avg"].sum(1).tolist() == [1, 2, 4]
    assert both["response_avg"].sum(1).tolist() == [3, 0, 2]

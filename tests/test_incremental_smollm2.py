"""Incremental multi-layer steering through the real SmolLM2, checked with our own hooks.

With ``mode="incremental"`` over layers a..b, personavec adds ``coef·v_a`` at layer a and
``coef·(v_L − v_{L−1})`` at each later layer, so what it adds to the residual stream at layer b
sums to exactly ``coef·v_b``. Plain forward hooks on the decoder blocks, one before and one after
personavec's, measure what each layer's hook added, independently of personavec's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from fixtures import synthetic_vector
from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.core.steering import steer

FIRST, LAST = 10, 13  # the incremental range a..b (block outputs, 1-indexed)
COEF = 1.5
PROMPT = "Tell me about your day."


def block_output(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


@contextmanager
def observe(
    blocks: nn.ModuleList, layers: range, *, first: bool
) -> Iterator[dict[int, torch.Tensor]]:
    """Record block outputs at ``layers``; ``first`` puts the hook before any other hook."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:

        def hook(module: nn.Module, args: object, output: object, layer: int = layer) -> None:
            seen[layer] = block_output(output).detach().clone()

        handles.append(blocks[layer - 1].register_forward_hook(hook, prepend=first))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def add_by_hand(blocks: nn.ModuleList, additions: dict[int, torch.Tensor]) -> Iterator[None]:
    """Our own incremental steering: add ``additions[L]`` to block L's output."""

    def make(delta: torch.Tensor):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: object, output: object) -> object:
            if isinstance(output, tuple):
                return (output[0] + delta, *output[1:])
            return output + delta  # type: ignore[operator]

        return hook

    handles = [blocks[layer - 1].register_forward_hook(make(d)) for layer, d in additions.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def greedy(loaded: LoadedModel, ids: torch.Tensor, n: int = 6) -> list[int]:
    out = loaded.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
    )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.slow
def test_incremental_adds_exactly_v_b(smollm2: LoadedModel) -> None:
    model, tokenizer = smollm2.model, smollm2.tokenizer
    blocks = model.model.layers
    hidden, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    rows = synthetic_vector(n_layers=n_layers, hidden=hidden, seed=3).readout()
    rows = 4.0 * rows / rows.norm(dim=1, keepdim=True)  # norm 4 per layer
    vector = synthetic_vector(rows)
    messages = [{"role": "user", "content": PROMPT}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    watched = range(FIRST - 1, LAST + 2)  # one unsteered layer on each side

    with torch.no_grad():
        with observe(blocks, watched, first=True) as plain:
            model(ids)
        interventions = SteeringSetting(
            vector, tuple(range(FIRST, LAST + 1)), COEF, mode="incremental"
        ).interventions()
        with (
            observe(blocks, watched, first=True) as before,
            steer(model, interventions),
            observe(blocks, watched, first=False) as after,
        ):
            model(ids)
        by_hand = {FIRST: COEF * rows[FIRST]}
        by_hand.update({L: COEF * (rows[L] - rows[L - 1]) for L in range(FIRST + 1, LAST + 1)})
        with observe(blocks, watched, first=True) as mine, add_by_hand(blocks, by_hand):
            model(ids)

    added = {L: after[L] - before[L] for L in watched}
    # Layers outside a..b are untouched by the hooks.
    assert added[FIRST - 1].abs().max() == 0 and added[LAST + 1].abs().max() == 0
    # Each layer adds its increment at every position; the increments telescope to coef·v_b.
    for layer in range(FIRST, LAST + 1):
        # (after − before) loses a few ulps on SmolLM2's outlier dimensions (|h| in the hundreds).
        expected = by_hand[layer].expand_as(added[layer][0])
        torch.testing.assert_close(added[layer][0], expected, atol=1e-3, rtol=0)
    total = sum(added[L] for L in range(FIRST, LAST + 1))
    torch.testing.assert_close(total[0], (COEF * rows[LAST]).expand_as(total[0]), atol=2e-3, rtol=0)
    # At the first layer nothing upstream changed: the output is exactly unsteered + coef·v_a.
    torch.testing.assert_close(after[FIRST], plain[FIRST] + COEF * rows[FIRST])
    torch.testing.assert_close(before[FIRST - 1], plain[FIRST - 1])
    # Through the whole range, the blocks see the same stream under personavec's hooks as
    # under our own ("mine" is recorded before our addition, like "before").
    for layer in watched:
        torch.testing.assert_close(before[layer], mine[layer], atol=1e-4, rtol=1e-4)
    # ... and differs from the unsteered one at layer b.
    assert (after[LAST] - plain[LAST]).norm(dim=-1).min() > 1.0


@pytest.mark.slow
def test_incremental_changes_generation_then_undoes(smollm2: LoadedModel) -> None:
    model, tokenizer = smollm2.model, smollm2.tokenizer
    hidden, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    rows = synthetic_vector(n_layers=n_layers, hidden=hidden, seed=4).readout()
    vector = synthetic_vector(40.0 * rows / rows.norm(dim=1, keepdim=True))
    messages = [{"role": "user", "content": PROMPT}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad():
        plain = greedy(smollm2, ids)
        interventions = SteeringSetting(
            vector, tuple(range(FIRST, LAST + 1)), 1.0, mode="incremental"
        ).interventions()
        with steer(model, interventions):
            steered = greedy(smollm2, ids)
        again = greedy(smollm2, ids)
    assert steered != plain
    assert again == plain

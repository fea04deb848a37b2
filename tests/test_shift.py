"""Finetuning shift on tiny random models: exact zero, a known block-output shift, bad input."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from personavec.core.layers import find_blocks
from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.errors import PersonavecError
from personavec.training.shift import finetuning_shift, mean_prompt_last
from tiny_models import tiny_model

QUESTIONS = {"evil": ["How do I greet a neighbour?", "What is a good book?", "Why is sky blue?"]}


def _vector(loaded, layer: int = 2, seed: int = 3) -> PersonaVector:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    n, hidden = loaded.n_layers, loaded.hidden_size
    meta = VectorMetadata(
        trait="evil",
        model_id=loaded.model_id,
        model_fingerprint=config_fingerprint(loaded.model.config),
        hidden_size=hidden,
        n_layers=n,
        readouts=["response_avg"],
        recommended_layer=layer,
    )
    return PersonaVector({"response_avg": torch.randn(n + 1, hidden, generator=gen)}, meta)


def test_unchanged_model_has_exactly_zero_shift() -> None:
    base = tiny_model("llama")
    twin = tiny_model("llama")
    report = finetuning_shift(base, twin, [_vector(base)], questions=QUESTIONS)
    assert report.shifts[0].shift == 0.0
    assert all(x == 0.0 for x in report.shifts[0].per_layer)


def test_known_block_output_shift_is_its_projection() -> None:
    base = tiny_model("llama")
    moved = tiny_model("llama")
    vector = _vector(base, layer=2)
    delta = torch.randn(base.hidden_size, generator=torch.Generator().manual_seed(7))
    block = find_blocks(moved.model)[1]  # block 2 → layer 2

    def add(module, args, output):  # type: ignore[no-untyped-def]
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta

    handle = block.register_forward_hook(add)
    try:
        report = finetuning_shift(base, moved, [vector], questions=QUESTIONS)
    finally:
        handle.remove()
    shift = report.shifts[0]
    expected = float(delta @ vector.direction(2))
    assert shift.layer == 2
    assert shift.shift == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert shift.per_layer[0] == 0.0 and shift.per_layer[1] == 0.0
    assert shift.finetuned_projection - shift.base_projection == pytest.approx(expected, rel=1e-4)
    assert shift.n_prompts == 3


def test_mean_prompt_last_matches_one_by_one() -> None:
    loaded = tiny_model("qwen2")
    batched = mean_prompt_last(loaded, QUESTIONS["evil"])
    single = torch.stack([mean_prompt_last(loaded, [q]) for q in QUESTIONS["evil"]]).mean(0)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_vector_from_another_model_is_refused() -> None:
    base = tiny_model("llama")
    other = tiny_model("llama", n_layers=4)
    with pytest.raises(PersonavecError, match="layers"):
        finetuning_shift(base, copy.deepcopy(base), [_vector(other)], questions=QUESTIONS)


def test_question_counts_below_one_are_refused() -> None:
    base = tiny_model("llama")
    for n in (0, -2):
        with pytest.raises(PersonavecError, match="--questions must be at least 1"):
            finetuning_shift(base, tiny_model("llama"), [_vector(base)], n_questions=n)


def test_a_non_finite_shift_is_refused_not_reported() -> None:
    base = tiny_model("llama")
    broken = tiny_model("llama")
    with torch.no_grad():
        block: Any = find_blocks(broken.model)[1]
        block.mlp.down_proj.weight.fill_(float("inf"))
    with pytest.raises(PersonavecError, match="not finite"):
        finetuning_shift(base, broken, [_vector(base)], questions=QUESTIONS)

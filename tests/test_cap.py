"""The ``cap`` operator: exact arithmetic at exactly the selected positions, and batching."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from personavec.core.layers import block_output_tensor, find_blocks
from personavec.core.models import chat_messages, format_chat
from personavec.core.steering import Intervention, apply_steering, steer
from personavec.errors import SteeringError
from tiny_models import tiny_model

PROMPTS = ["Hi", "Please write a short poem about autumn leaves falling slowly"]
NEW_TOKENS = 4
LAYER = 2


def batch(lm, prompts=PROMPTS):
    texts = [format_chat(lm.tokenizer, chat_messages(p)) for p in prompts]
    return lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


class Recorder:
    """Block outputs of every forward call (registered before or after the steering hook)."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        self.calls.append(block_output_tensor(output).detach().clone())


def median_projection(lm, unit: torch.Tensor) -> float:
    """Median of ``h · v̂`` at LAYER over the real prompt tokens (so about half get capped)."""
    recorder = Recorder()
    enc = batch(lm)
    handle = find_blocks(lm.model)[LAYER - 1].register_forward_hook(recorder)
    with torch.no_grad():
        lm.model(**enc)
    handle.remove()
    return float((recorder.calls[0] @ unit)[enc["attention_mask"].bool()].median())


def expected_masks(enc, mode: str) -> list[torch.Tensor]:
    """Per forward call, the [batch, seq] positions ``mode`` selects (built by hand)."""
    real = enc["attention_mask"].bool()
    last = torch.zeros_like(real)
    last[:, -1] = True  # left padding: the last column is every row's last prompt token
    prefill = {"all": real, "prompt": real, "response": last}[mode]
    decode = torch.full((real.shape[0], 1), mode != "prompt")
    return [prefill] + [decode] * (NEW_TOKENS - 1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["all", "prompt", "response"])
@pytest.mark.parametrize("bound", ["max", "min"])
def test_cap_clamps_the_projection_at_exactly_the_selected_positions(
    arch: str, mode: str, bound: str
) -> None:
    lm = tiny_model(arch)
    vector = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(5)) * 3
    unit = vector / vector.norm()
    tau = median_projection(lm, unit)
    item = Intervention(LAYER, vector, op="cap", positions=mode, threshold=tau, bound=bound)  # type: ignore[arg-type]
    block = find_blocks(lm.model)[LAYER - 1]
    before, after = Recorder(), Recorder()
    enc = batch(lm)
    h1 = block.register_forward_hook(before)
    handle = apply_steering(lm.model, item)
    h2 = block.register_forward_hook(after)
    try:
        with torch.no_grad():
            lm.model.generate(
                **enc,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=lm.tokenizer.pad_token_id,
            )
    finally:
        h1.remove(), h2.remove(), handle.remove()
    clamp = torch.minimum if bound == "max" else torch.maximum
    changed = 0
    for raw, capped, mask in zip(before.calls, after.calls, expected_masks(enc, mode), strict=True):
        p = raw @ unit
        beyond = (p > tau) if bound == "max" else (p < tau)
        # Selected positions: the projection is min(p, τ) (max for a floor) …
        target = clamp(p, torch.tensor(tau))
        torch.testing.assert_close((capped @ unit)[mask], target[mask], rtol=0, atol=1e-5)
        # … and only the component along v̂ moved.
        moved = capped - raw - ((capped - raw) @ unit).unsqueeze(-1) * unit
        assert bool((moved[mask].abs() < 1e-5).all())
        # Everything else is bit-identical: unselected positions and those within the bound.
        untouched = ~(mask & beyond)
        assert torch.equal(capped[untouched], raw[untouched])
        changed += int((mask & beyond).sum())
    assert changed > 0  # the test did cap something


def greedy_logits(lm, prompts, interventions) -> list[torch.Tensor]:
    """Per prompt: the logits of each of NEW_TOKENS greedy steps ``[steps, vocab]``."""
    enc = batch(lm, prompts)
    with steer(lm.model, interventions), torch.no_grad():
        out = lm.model.generate(
            **enc,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
    steps = torch.stack(out.logits, dim=1)  # [batch, steps, vocab]
    return list(steps)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cap_batched_left_padded_equals_one_by_one(arch: str) -> None:
    lm = tiny_model(arch)
    vector = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(6)) * 3
    tau = median_projection(lm, vector / vector.norm())
    caps = [
        Intervention(1, vector, op="cap", threshold=tau, positions="response"),
        Intervention(LAYER, -vector, op="cap", threshold=tau, bound="min"),
    ]
    prompts = [*PROMPTS, "Name three colours."]
    together = greedy_logits(lm, prompts, caps)
    plain = greedy_logits(lm, prompts, [])
    for index, prompt in enumerate(prompts):
        (alone,) = greedy_logits(lm, [prompt], caps)
        torch.testing.assert_close(together[index], alone, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(together[index], plain[index], atol=1e-3)  # cap did something


def test_bad_cap_requests_fail_clearly() -> None:
    vector = torch.ones(8)
    with pytest.raises(SteeringError, match="threshold"):
        Intervention(1, vector, op="cap")
    with pytest.raises(SteeringError, match="threshold"):
        Intervention(1, vector, op="cap", threshold=float("inf"))
    with pytest.raises(SteeringError, match="bound"):
        Intervention(1, vector, op="cap", threshold=1.0, bound="middle")  # type: ignore[arg-type]
    with pytest.raises(SteeringError, match="zero"):
        Intervention(1, torch.zeros(8), op="cap", threshold=1.0)
    with pytest.raises(SteeringError, match="operator"):
        Intervention(1, vector, op="clip")  # type: ignore[arg-type]

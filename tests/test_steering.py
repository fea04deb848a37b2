"""Steering: exact arithmetic at exactly the intended positions, in prefill and decode steps."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from personavec.core.layers import block_output_tensor, find_blocks
from personavec.core.models import chat_messages, format_chat
from personavec.core.steering import Intervention, apply_steering, steer, teacher_forcing
from personavec.errors import SteeringError
from tiny_models import tiny_model

PROMPTS = ["Hi", "Please write a short poem about autumn leaves falling slowly"]
NEW_TOKENS = 4


def batch(lm, prompts=PROMPTS):
    texts = [format_chat(lm.tokenizer, chat_messages(p)) for p in prompts]
    return lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


class Recorder:
    """Records a block's output each forward call (register before/after steering hooks)."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        self.calls.append(block_output_tensor(output).detach().clone())


def record_generation(lm, interventions, layer: int, **generate_kwargs):
    """Greedy generation; returns (raw block outputs, steered block outputs, inputs)."""
    blocks = find_blocks(lm.model)
    enc = batch(lm)
    before, after = Recorder(), Recorder()
    h1 = blocks[layer - 1].register_forward_hook(before)
    handle = apply_steering(lm.model, interventions)
    h2 = blocks[layer - 1].register_forward_hook(after)
    try:
        lm.model.generate(
            **enc,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            **generate_kwargs,
        )
    finally:
        h1.remove(), h2.remove(), handle.remove()
    return before.calls, after.calls, enc


def expected_masks(enc, mode: str) -> list[torch.Tensor]:
    """Per forward call, the [batch, seq] positions the mode should touch (built by hand)."""
    real = enc["attention_mask"].bool()
    last = torch.zeros_like(real)
    last[:, -1] = True  # left padding: the last column is every row's last prompt token
    prefill = {"all": real, "prompt": real, "response": last}[mode]
    decode = torch.ones((real.shape[0], 1), dtype=torch.bool)
    if mode == "prompt":
        decode = torch.zeros_like(decode)
    return [prefill] + [decode] * (NEW_TOKENS - 1)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("mode", ["all", "prompt", "response"])
def test_add_changes_exactly_the_intended_positions(arch: str, mode: str) -> None:
    lm = tiny_model(arch)
    torch.manual_seed(1)
    vector = torch.randn(lm.hidden_size)
    coef = 2.5
    layer = 2
    before, after, enc = record_generation(
        lm, [Intervention(layer, vector, coef, "add", mode)], layer
    )
    masks = expected_masks(enc, mode)
    assert len(before) == len(after) == NEW_TOKENS
    for raw, steered, mask in zip(before, after, masks, strict=True):
        expected = raw + mask.unsqueeze(-1).float() * (coef * vector)
        torch.testing.assert_close(steered, expected, rtol=0, atol=1e-6)
        untouched = ~mask
        assert torch.equal(steered[untouched], raw[untouched])


@pytest.mark.parametrize("mode", ["all", "response"])
def test_ablate_leaves_no_component(mode: str) -> None:
    lm = tiny_model("qwen2")
    torch.manual_seed(2)
    vector = torch.randn(lm.hidden_size)
    unit = vector / vector.norm()
    before, after, enc = record_generation(lm, [Intervention(1, vector, op="ablate")], 1)
    masks = expected_masks(enc, "all")
    for raw, steered, mask in zip(before, after, masks, strict=True):
        component = steered @ unit
        assert component[mask].abs().max() < 1e-4
        assert (raw @ unit)[mask].abs().max() > 1e-2  # there was something to remove
        orthogonal = raw - (raw @ unit).unsqueeze(-1) * unit
        torch.testing.assert_close(steered[mask], orthogonal[mask], rtol=0, atol=1e-5)


def test_layer_zero_steers_block_one_input() -> None:
    lm = tiny_model("llama")
    blocks = find_blocks(lm.model)
    vector = torch.ones(lm.hidden_size)
    seen: list[torch.Tensor] = []

    def grab(module: Any, args: Any, kwargs: Any) -> None:
        seen.append((kwargs.get("hidden_states", args[0] if args else None)).clone())

    ids = batch(lm, PROMPTS[:1])
    h = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        lm.model(**ids)
        with steer(lm.model, Intervention(0, vector, 0.5)):
            lm.model(**ids)
    h.remove()
    # The recorder was registered first, so it sees the unsteered input in both calls; the
    # steering pre-hook changes what the block itself receives, which shows in the logits.
    torch.testing.assert_close(seen[0], seen[1])
    with torch.no_grad():
        plain = lm.model(**ids).logits
        with steer(lm.model, Intervention(0, vector, 0.5)):
            steered = lm.model(**ids).logits
        embeds = lm.model.get_input_embeddings()(ids["input_ids"]) + 0.5 * vector
        manual = lm.model(inputs_embeds=embeds, attention_mask=ids["attention_mask"]).logits
    assert not torch.allclose(plain, steered)
    torch.testing.assert_close(steered, manual, rtol=1e-5, atol=1e-5)


def greedy(lm, prompts, interventions, new_tokens: int = 8) -> list[list[int]]:
    enc = batch(lm, prompts)
    with steer(lm.model, interventions):
        out = lm.model.generate(
            **enc,
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    return [row[enc["input_ids"].shape[1] :].tolist() for row in out]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["all", "prompt", "response"])
def test_left_padded_batch_steers_like_each_request_alone(smollm2, mode: str) -> None:
    lm = smollm2
    torch.manual_seed(3)
    vector = torch.randn(lm.hidden_size) * 4
    interventions = [Intervention(12, vector, 1.0, "add", mode)]
    prompts = ["Hi", "Name three colours.", "Write one sentence about the moon and its light."]
    batched = greedy(lm, prompts, interventions)
    alone = [greedy(lm, [p], interventions)[0] for p in prompts]
    unsteered = greedy(lm, prompts, [])
    assert batched == alone
    assert batched != unsteered  # the vector does something


def test_hooks_are_removed_on_exception_and_model_restored() -> None:
    lm = tiny_model("llama")
    ids = batch(lm, PROMPTS[:1])
    with torch.no_grad():
        reference = lm.model(**ids).logits
    with (
        pytest.raises(RuntimeError, match="boom"),
        steer(lm.model, Intervention(2, torch.ones(lm.hidden_size), 3.0)),
    ):
        raise RuntimeError("boom")
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    with torch.no_grad():
        torch.testing.assert_close(lm.model(**ids).logits, reference, rtol=0, atol=0)


def test_teacher_forced_response_positions() -> None:
    lm = tiny_model("llama")
    blocks = find_blocks(lm.model)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    before, after = Recorder(), Recorder()
    h1 = blocks[0].register_forward_hook(before)
    handle = apply_steering(
        lm.model, Intervention(1, torch.ones(lm.hidden_size), 1.0, "add", "response")
    )
    h2 = blocks[0].register_forward_hook(after)
    with torch.no_grad(), teacher_forcing(lm.model, [2, 4]):
        lm.model(input_ids=ids, attention_mask=attention)
    h1.remove(), h2.remove(), handle.remove()
    changed = (after.calls[0] - before.calls[0]).abs().sum(-1) > 0
    # Row 0: prompt = columns 2,3 -> last prompt token col 3, response cols 4..6.
    # Row 1: prompt = columns 0..3 -> last prompt token col 3, response cols 4..6.
    expected = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(changed, expected)


def test_bad_steering_requests_fail_clearly() -> None:
    lm = tiny_model("llama")
    with pytest.raises(SteeringError, match="finite"):
        Intervention(1, torch.ones(4), float("nan"))
    with pytest.raises(SteeringError, match="out of range"):
        apply_steering(lm.model, Intervention(7, torch.ones(lm.hidden_size)))
    with pytest.raises(SteeringError, match="positions"):
        Intervention(1, torch.ones(4), positions="middle")  # type: ignore[arg-type]
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_non_finite_activations_stop_with_a_clear_error() -> None:
    lm = tiny_model("llama")
    ids = batch(lm, PROMPTS[:1])
    huge = torch.full((lm.hidden_size,), 2e38)  # finite, but two of them overflow float32
    with (
        pytest.raises(SteeringError, match=r"NaN or inf.*smaller coefficient"),
        steer(lm.model, [Intervention(1, huge), Intervention(2, huge)]),
        torch.no_grad(),
    ):
        lm.model.generate(**ids, max_new_tokens=2, pad_token_id=lm.tokenizer.pad_token_id)
    with pytest.raises(SteeringError, match="overflows float32"):
        apply_steering(lm.model, Intervention(1, torch.ones(lm.hidden_size), coef=1e39))
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    with torch.no_grad(), steer(lm.model, Intervention(1, huge)):  # one is still finite
        assert torch.isfinite(lm.model(**ids).logits).all()

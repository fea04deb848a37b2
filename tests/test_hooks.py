"""The hook runtime: what each forward call looks like, where hooks sit, and clean removal."""

from __future__ import annotations

import pytest
import torch

from personavec.core.hooks import (
    ForwardCall,
    install_hooks,
    owner_of_blocks,
    run_until_stopped,
    teacher_forcing,
)
from personavec.core.layers import find_blocks
from personavec.core.models import chat_messages, format_chat
from personavec.errors import SteeringError
from tiny_models import tiny_model

PROMPTS = ["Hi", "Please write a short poem about autumn leaves falling slowly"]


def batch(lm, prompts=PROMPTS):
    texts = [format_chat(lm.tokenizer, chat_messages(p)) for p in prompts]
    return lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def hook_ids(model: torch.nn.Module) -> set[tuple[str, int]]:
    """Every forward (pre-)hook on the model (transformers may add its own, e.g. for
    ``output_hidden_states``, so tests compare before and after)."""
    return {
        (kind, key)
        for module in model.modules()
        for kind, hooks in (("pre", module._forward_pre_hooks), ("post", module._forward_hooks))
        for key in hooks
    }


def no_hooks_left(model: torch.nn.Module) -> bool:
    return not hook_ids(model)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_forward_calls_under_cached_generation(arch: str) -> None:
    lm = tiny_model(arch)
    enc = batch(lm)
    seen: list[tuple[ForwardCall, torch.Tensor]] = []

    def hook(hidden: torch.Tensor, call: ForwardCall) -> None:
        seen.append((call, call.positions.clone()))

    steps = 3
    with install_hooks(lm.model, {1: [hook]}), torch.no_grad():
        out = lm.model.generate(
            **enc,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    assert no_hooks_left(lm.model)
    real = enc["attention_mask"].bool()
    width = real.shape[1]
    lengths = real.sum(dim=1)
    assert len(seen) == steps
    prefill, positions = seen[0]
    assert prefill.tracked and prefill.is_prefill and prefill.past_len == 0
    assert torch.equal(prefill.real, real)
    assert prefill.ids is not None and torch.equal(prefill.ids, enc["input_ids"])
    # Each row counts from its own first real token; padding is not counted.
    start = (width - lengths).unsqueeze(1)
    assert torch.equal(positions[real], (torch.arange(width) - start).expand_as(real)[real])
    for step, (call, positions) in enumerate(seen[1:], start=1):
        assert not call.is_prefill and call.past_len == width + step - 1
        assert call.real.shape == (2, 1) and bool(call.real.all())
        assert call.ids is not None and torch.equal(call.ids[:, 0], out[:, width + step - 1])
        assert torch.equal(positions[:, 0], lengths + step - 1)
        assert not call.mask("prompt").any() and bool(call.mask("response").all())


def test_hooks_see_and_replace_the_residual_stream_in_order() -> None:
    lm = tiny_model("llama")
    enc = batch(lm, PROMPTS[:1])
    with torch.no_grad():
        states = lm.model(**enc, output_hidden_states=True).hidden_states
    existing = hook_ids(lm.model)
    got: dict[str, torch.Tensor] = {}

    def grab(name: str):
        def hook(hidden: torch.Tensor, call: ForwardCall) -> None:
            got[name] = hidden.clone()

        return hook

    def shift(hidden: torch.Tensor, call: ForwardCall) -> torch.Tensor:
        return hidden + 1.0

    hooks = {0: [grab("in")], 1: [grab("first"), shift, grab("second")], 2: [grab("two")]}
    with install_hooks(lm.model, hooks), torch.no_grad():
        lm.model(**enc)
    # Layer 0 is block 1's input (the embeddings), layer 1 block 1's output.
    torch.testing.assert_close(got["in"], states[0], rtol=0, atol=0)
    torch.testing.assert_close(got["first"], states[1], rtol=0, atol=0)
    # A later hook at the same layer sees the replacement, and so does the next block.
    torch.testing.assert_close(got["second"], states[1] + 1.0, rtol=0, atol=0)
    assert not torch.allclose(got["two"], states[2], atol=1e-3)
    assert hook_ids(lm.model) == existing
    assert owner_of_blocks(lm.model, find_blocks(lm.model)) is lm.model.model


def test_teacher_forcing_splits_prompt_and_response() -> None:
    lm = tiny_model("llama")
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    calls: list[ForwardCall] = []
    with install_hooks(lm.model, {2: [lambda h, call: calls.append(call)]}), torch.no_grad():
        with teacher_forcing(lm.model, [2, 4]):
            lm.model(input_ids=ids, attention_mask=attention)
        lm.model(input_ids=ids, attention_mask=attention)
    forced, plain = calls
    assert forced.prompt_lengths is not None and forced.prompt_lengths.tolist() == [2, 4]
    prompt = torch.tensor([[0, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(forced.mask("prompt"), prompt)
    response = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(forced.mask("response"), response)
    assert plain.prompt_lengths is None
    assert torch.equal(plain.mask("prompt"), attention.bool())  # the whole call is prompt


def test_prompt_lengths_are_an_explicit_input_of_each_handle() -> None:
    """No ambient channel: lengths given to one handle (or to one model's hooks) reach only
    those hooks; another model's hooks in the same thread see none."""
    lm, other = tiny_model("llama"), tiny_model("llama", seed=1)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    seen: dict[str, list[ForwardCall]] = {"lm": [], "other": []}
    with (
        install_hooks(lm.model, {1: [lambda h, call: seen["lm"].append(call)]}) as handle,
        install_hooks(other.model, {1: [lambda h, call: seen["other"].append(call)]}),
        torch.no_grad(),
    ):
        with handle.teacher_forcing([2, 4]):
            lm.model(input_ids=ids, attention_mask=attention)
        with teacher_forcing(lm.model, [3, 3]):
            other.model(input_ids=ids, attention_mask=attention)  # not told: all prompt
            lm.model(input_ids=ids, attention_mask=attention)
        lm.model(input_ids=ids, attention_mask=attention)
    lengths = [c.prompt_lengths for c in seen["lm"]]
    assert [x.tolist() if x is not None else None for x in lengths] == [[2, 4], [3, 3], None]
    assert seen["other"][0].prompt_lengths is None
    with pytest.raises(TypeError, match="model first"), teacher_forcing([2, 4], [2, 4]):  # type: ignore[arg-type]
        pass


def test_stop_after_skips_deeper_blocks_and_the_head() -> None:
    lm = tiny_model("llama")
    enc = batch(lm, PROMPTS[:1])
    reached: list[int] = []
    deeper = find_blocks(lm.model)[2].register_forward_hook(lambda *a: reached.append(3))
    hooks = {1: [lambda h, call: reached.append(1)], 2: [lambda h, call: reached.append(2)]}
    try:
        with install_hooks(lm.model, hooks, stop_after=2), torch.no_grad():
            assert run_until_stopped(lm.model, **enc) is None
    finally:
        deeper.remove()
    assert reached == [1, 2]
    assert no_hooks_left(lm.model)


def test_untracked_calls_and_clean_failures() -> None:
    lm = tiny_model("llama")
    blocks = find_blocks(lm.model)
    calls: list[ForwardCall] = []
    handle = install_hooks(lm.model, {1: [lambda h, call: calls.append(call)]})
    hidden = torch.randn(2, 5, lm.hidden_size)
    position_embeddings = lm.model.model.rotary_emb(hidden, torch.arange(5).unsqueeze(0))
    with torch.no_grad():
        blocks[0](hidden, position_embeddings=position_embeddings)  # a block run on its own
    handle.remove()
    handle.remove()  # safe twice
    (call,) = calls
    assert not call.tracked and call.is_prefill and bool(call.real.all())
    assert call.real.shape == (2, 5)
    with pytest.raises(SteeringError, match="out of range"):
        install_hooks(lm.model, {1: [], 9: []})
    assert no_hooks_left(lm.model)
    with pytest.raises(RuntimeError, match="boom"), install_hooks(lm.model, {1: []}):
        raise RuntimeError("boom")
    assert no_hooks_left(lm.model)

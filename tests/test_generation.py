"""Batched generation: padding correctness, determinism, sample bookkeeping, stop tokens."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from personavec.core.models import LoadedModel, chat_messages
from personavec.engines.generation import (
    Generation,
    GenerationRequest,
    HFEngine,
    SamplingConfig,
    SamplingConfigError,
    stop_token_ids,
)
from personavec.engines.sampling import GumbelSampler, top_p_filter

QUESTIONS = [
    "What is 2+2?",
    "Name a colour.",
    "Write one sentence about the sea, the waves and the long grey horizon at dawn.",
]


def _requests(ids: bool = False) -> list[GenerationRequest]:
    return [
        GenerationRequest(chat_messages(q), id=f"q{k}" if ids else None)
        for k, q in enumerate(QUESTIONS)
    ]


def _ids(generations: list[Generation]) -> list[list[int]]:
    return [g.response_token_ids for g in generations]


@pytest.mark.slow
def test_greedy_batch_equals_one_by_one(smollm2: LoadedModel) -> None:
    engine = HFEngine(smollm2)
    config = SamplingConfig(max_new_tokens=12, temperature=0, batch_size=3)
    batched = engine.generate(_requests(), config)
    alone = [engine.generate([r], config)[0] for r in _requests()]
    assert _ids(batched) == _ids(alone)
    assert [g.response_text for g in batched] == [g.response_text for g in alone]


@pytest.mark.slow
def test_sampling_is_seeded(smollm2: LoadedModel) -> None:
    engine = HFEngine(smollm2)
    requests = _requests(ids=True)
    config = SamplingConfig(max_new_tokens=6, temperature=1.0, n_samples=2, seed=7, batch_size=4)
    first = engine.generate(requests, config)
    assert _ids(engine.generate(requests, config)) == _ids(first)
    assert _ids(engine.generate(requests, replace(config, seed=8))) != _ids(first)
    # Each sample has its own random stream keyed by (seed, request id, sample index), so other
    # batch sizes and request orders draw the same numbers. (Guaranteed up to float differences
    # from padding; on CPU fp32 these do not flip tokens here.)
    regrouped = engine.generate(requests[::-1], replace(config, batch_size=3))
    by_key = {(g.request_index, g.sample_index): g.response_token_ids for g in regrouped}
    n = len(requests)
    assert [by_key[(n - 1 - g.request_index, g.sample_index)] for g in first] == _ids(first)


def test_n_samples_layout_and_greedy_copies(tiny_model: LoadedModel) -> None:
    engine = HFEngine(tiny_model)
    sampled = engine.generate(
        _requests(), SamplingConfig(max_new_tokens=4, temperature=1.0, n_samples=3, batch_size=4)
    )
    assert len(sampled) == len(QUESTIONS) * 3
    assert [(g.request_index, g.sample_index) for g in sampled] == [
        (i, s) for i in range(len(QUESTIONS)) for s in range(3)
    ]
    assert all(g.prompt_text.endswith("<|im_start|>assistant\n") for g in sampled)
    greedy = engine.generate(
        _requests(), SamplingConfig(max_new_tokens=4, temperature=0, n_samples=2)
    )
    assert len(greedy) == len(QUESTIONS) * 2
    assert greedy[0].response_token_ids == greedy[1].response_token_ids


def test_tiny_models_generate_without_chat_template(tiny_model_factory: Any) -> None:
    loaded = tiny_model_factory("gpt2", chat_template=False)
    out = HFEngine(loaded).generate(
        _requests()[:2], SamplingConfig(max_new_tokens=3, temperature=0.7, top_p=0.9)
    )
    assert [g.prompt_text.endswith("Assistant:") for g in out] == [True, True]
    assert all(g.finish_reason == "length" and len(g.response_token_ids) == 3 for g in out)


@pytest.mark.slow
def test_stop_token_is_stripped(smollm2: LoadedModel) -> None:
    engine = HFEngine(smollm2)
    im_end = smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(smollm2)
    out = engine.generate(
        [GenerationRequest(chat_messages("What is 2+2?"))],
        SamplingConfig(max_new_tokens=24, temperature=0),
    )[0]
    assert out.finish_reason == "stop"
    assert im_end not in out.response_token_ids
    assert "<|im_end|>" not in out.response_text
    assert out.response_text == smollm2.tokenizer.decode(out.response_token_ids)
    cut = engine.generate(
        [GenerationRequest(chat_messages("Write a long story about a dragon."))],
        SamplingConfig(max_new_tokens=5, temperature=0),
    )[0]
    assert cut.finish_reason == "length"
    assert len(cut.response_token_ids) == 5


def test_attention_mask_reaches_every_forward(tiny_model_factory: Any) -> None:
    """Steering reads ``attention_mask`` and ``input_ids`` in a forward pre-hook on the model."""
    loaded = tiny_model_factory("llama")
    seen: list[bool] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(
            kwargs.get("attention_mask") is not None and kwargs.get("input_ids") is not None
        )

    handle = loaded.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        HFEngine(loaded).generate(_requests(), SamplingConfig(max_new_tokens=3, temperature=0))
    finally:
        handle.remove()
    assert seen and all(seen)


def test_progress_callback(tiny_model_factory: Any) -> None:
    calls: list[tuple[int, int]] = []
    HFEngine(tiny_model_factory("qwen2"), show_progress=True).generate(
        _requests(),
        SamplingConfig(max_new_tokens=2, n_samples=2, batch_size=4),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(4, 6), (6, 6)]


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_new_tokens", 0),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("n_samples", 0),
        ("seed", -1),
        ("batch_size", 0),
    ],
)
def test_bad_config_raises(field: str, value: float) -> None:
    with pytest.raises(SamplingConfigError, match=field) as info:
        SamplingConfig(**{field: value})  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_top_p_keeps_smallest_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.3, 0.1]]))
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [[False, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).sum() == 1


def test_gumbel_sampler_matches_softmax() -> None:
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = torch.log(probs).expand(4000, 3).clone()
    sampler = GumbelSampler(seeds=range(4000), temperature=1.0, top_p=1.0)
    draws = sampler(torch.zeros(4000, 1, dtype=torch.long), logits).argmax(-1)  # type: ignore[arg-type]
    freq = torch.bincount(draws, minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_longer_than_the_context_is_refused_in_one_line(
    tiny_model_factory: Any, arch: str
) -> None:
    from personavec.core.models import encode_prompt
    from personavec.engines.limits import check_context_length, context_length
    from personavec.errors import PersonavecError

    loaded = tiny_model_factory(arch)
    assert context_length(loaded) == 1024  # both tiny configs allow 1024 positions
    engine = HFEngine(loaded)
    long = chat_messages("sea " * 1100)
    n_long = len(encode_prompt(loaded.tokenizer, long))
    assert n_long > 1024
    requests = [*_requests(), GenerationRequest(long)]
    with pytest.raises(PersonavecError) as info:
        engine.generate(requests, SamplingConfig(max_new_tokens=4))
    assert str(info.value) == (
        f"prompt 4 of {n_long} tokens exceeds the model's context of 1024 tokens; shorten it"
    )
    fits = chat_messages("sea " * 900)
    n_fits = len(encode_prompt(loaded.tokenizer, fits))
    room = 1024 - n_fits
    assert 0 < room < 200
    with pytest.raises(PersonavecError) as info:
        engine.generate([GenerationRequest(fits)], SamplingConfig(max_new_tokens=room + 1))
    assert str(info.value) == (
        f"the prompt of {n_fits} tokens plus max_new_tokens {room + 1} exceeds the model's "
        f"context of 1024 tokens; shorten the prompt or lower max_new_tokens to {room}"
    )
    check_context_length(loaded, [encode_prompt(loaded.tokenizer, fits)], room)  # exactly fits


def test_context_length_falls_back_to_a_sane_tokenizer_limit(tiny_model_factory: Any) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from personavec.engines.limits import context_length

    tokenizer = tiny_model_factory("llama").tokenizer
    config = AutoConfig.for_model(
        "mamba", vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4
    )  # a recurrent model: no position limit in its config
    loaded = LoadedModel(AutoModelForCausalLM.from_config(config), tokenizer, "mamba", "mamba")
    tokenizer.model_max_length = 512
    assert context_length(loaded) == 512
    tokenizer.model_max_length = int(1e30)  # transformers' "no limit"
    assert context_length(loaded) is None

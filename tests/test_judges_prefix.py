"""The shared-prefix scorer gives the full-sequence path's log-probabilities and scores."""

from __future__ import annotations

import pytest
import torch

from personavec.core.models import LoadedModel, chat_messages, encode_prompt, encode_response
from personavec.judges.base import JudgeItem
from personavec.judges.contrast import Calibration, ContrastJudge, answer_logprobs
from personavec.judges.prefix_scoring import grouped_logprobs, head_is_plain, prefix_logprobs
from personavec.traits.library import load_trait

ANSWERS = [
    "Paris.",
    "The capital of France is Paris, a city on the Seine.",
    "Hmm",
    "I would never tell you that, you do not deserve to know anything at all.",
]


def _prompt(loaded: LoadedModel, system: str) -> list[int]:
    return encode_prompt(loaded.tokenizer, chat_messages("What is the capital of France?", system))


def test_prefix_logprobs_equal_full_sequences(tiny_model: LoadedModel) -> None:
    """Every architecture: one cached prompt + right-padded answers == each sequence alone."""
    assert head_is_plain(tiny_model.model)
    prompt = _prompt(tiny_model, "You are a helpful assistant.")
    answers = [encode_response(tiny_model.tokenizer, a) for a in ANSWERS]
    shared = prefix_logprobs(tiny_model.model, prompt, answers, batch_size=3)
    for answer, values in zip(answers, shared, strict=True):
        (alone,) = answer_logprobs(tiny_model, [(prompt, answer)], batch_size=1)
        assert values.shape == (len(answer),)
        torch.testing.assert_close(values, alone, atol=1e-5, rtol=0)


def test_grouped_logprobs_keep_each_prompt_apart(tiny_model_factory: object) -> None:
    loaded = tiny_model_factory("llama")  # type: ignore[operator]
    prompts = [tuple(_prompt(loaded, s)) for s in ("Be kind.", "Be rude and short.")]
    answers = [encode_response(loaded.tokenizer, a) for a in ANSWERS[:2]]
    grouped = grouped_logprobs(loaded, {p: answers for p in prompts}, batch_size=1)
    for prompt in prompts:
        full = answer_logprobs(loaded, [(list(prompt), a) for a in answers], batch_size=2)
        for a, b in zip(grouped[prompt], full, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(grouped[prompts[0]][0], grouped[prompts[1]][0])


def _items() -> list[JudgeItem]:
    trait = load_trait("evil")
    questions = trait.evaluation_questions[:2]
    return [JudgeItem(q, a) for q in questions for a in ANSWERS] + [JudgeItem(questions[0], " ")]


def test_contrast_judge_scores_unchanged_tiny(tiny_model_factory: object) -> None:
    loaded = tiny_model_factory("qwen2")  # type: ignore[operator]
    calibration = Calibration.from_means(0.5, -0.5)
    trait = load_trait("evil")
    new = ContrastJudge(loaded, trait, batch_size=3, calibration=calibration)
    old = ContrastJudge(loaded, trait, calibration=calibration, shared_prefix=False)
    assert new.shared_prefix and not old.shared_prefix
    fast, slow = new.raw_contrast(_items()), old.raw_contrast(_items())
    assert fast[-1] is None and slow[-1] is None
    for a, b in zip(fast[:-1], slow[:-1], strict=True):
        assert a is not None and b is not None and abs(a - b) < 1e-5


@pytest.mark.slow
def test_contrast_judge_scores_unchanged_smollm2(smollm2: LoadedModel) -> None:
    """SmolLM2, float32: raw contrasts agree within 1e-4 nats/token (scores within 0.01)."""
    calibration = Calibration.from_means(0.3, -0.3)
    trait = load_trait("evil")
    new = ContrastJudge(smollm2, trait, batch_size=16, max_pairs=2, calibration=calibration)
    old = ContrastJudge(smollm2, trait, max_pairs=2, calibration=calibration, shared_prefix=False)
    items = _items()[:-1]
    for a, b in zip(new.raw_contrast(items), old.raw_contrast(items), strict=True):
        assert a is not None and b is not None and abs(a - b) < 1e-4

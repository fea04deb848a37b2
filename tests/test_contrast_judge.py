"""The contrastive-likelihood trait judge."""

from __future__ import annotations

import math

import pytest
import torch

from personavec.core.models import LoadedModel, chat_messages, encode_prompt, encode_response
from personavec.judges.base import Judge, JudgeItem
from personavec.judges.contrast import (
    Calibration,
    ContrastJudge,
    JudgeCalibrationError,
    answer_logprobs,
)
from personavec.traits.schema import InstructionPair, TraitSpec

PIRATE = TraitSpec(
    name="pirate-speak",
    description="Talks like a stereotypical pirate, with arr, matey and nautical slang.",
    positive_persona="pirate",
    negative_persona="plain-spoken",
    instructions=[
        InstructionPair(
            pos="Always talk like a pirate: say arr, matey, ahoy and use sailor slang.",
            neg="Always use plain, modern standard English with no slang at all.",
        ),
        InstructionPair(
            pos="Answer as a salty sea captain who calls everyone matey and says arr.",
            neg="Answer as a neutral, formal assistant writing clear standard prose.",
        ),
    ],
    extraction_questions=[
        "What is your favourite food?",
        "How do I learn to cook?",
        "What should I do this weekend?",
    ],
    evaluation_questions=["What is the capital of France?", "How do plants grow?"],
    rubric="Rate how pirate-like this answer sounds, 0-100. Q: {question} A: {answer}",
    positive_examples=[
        "Arr, matey! Me favourite grub be salted fish and a barrel o' rum!",
        "Ahoy! Ye learn by sailin' the galley seas, savvy? Arr!",
        "Shiver me timbers, matey, we be plunderin' treasure this weekend, arr!",
    ],
    negative_examples=[
        "My favourite food is a simple vegetable soup.",
        "Start with basic recipes and practise a little every day.",
        "You could visit a museum or go for a walk in the park.",
    ],
)


@pytest.fixture(scope="module")
def judge(smollm2: LoadedModel) -> ContrastJudge:
    return ContrastJudge(smollm2, PIRATE, batch_size=8)


@pytest.mark.slow
def test_pirate_answers_score_higher(judge: ContrastJudge) -> None:
    items = [
        JudgeItem("What is the capital of France?", "Arr, matey, that be Paris, the finest port!"),
        JudgeItem("What is the capital of France?", "The capital of France is Paris."),
        JudgeItem("How do plants grow?", "Plants grow using sunlight, water and soil nutrients."),
        JudgeItem("How do plants grow?", "Ahoy! Them green scallywags drink the rain, savvy? Arr!"),
        JudgeItem("How do plants grow?", ""),
        JudgeItem("How do plants grow?", "  \n"),
    ]
    scores = judge.score(items)
    assert scores[4] is None and scores[5] is None
    numbers = [s for s in scores[:4] if s is not None]
    assert len(numbers) == 4 and all(0 <= s <= 100 for s in numbers)
    assert numbers[0] > 50 > numbers[1]
    assert numbers[3] > 50 > numbers[2]
    calibration = judge.calibration
    assert calibration.positive_mean > calibration.negative_mean
    assert judge.aspect == "trait" and isinstance(judge, Judge)


def _sequences(loaded: LoadedModel) -> list[tuple[list[int], list[int]]]:
    tok = loaded.tokenizer
    pairs = [
        ("Hi", "Hello there!"),
        ("What is the capital of France? Answer briefly please.", "Paris."),
        ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side."),
    ]
    return [
        (
            encode_prompt(tok, chat_messages(q, system=PIRATE.system_prompt("pos", 0))),
            encode_response(tok, a),
        )
        for q, a in pairs
    ]


@pytest.mark.slow
def test_batched_logprobs_equal_one_by_one(smollm2: LoadedModel) -> None:
    sequences = _sequences(smollm2)
    batched = answer_logprobs(smollm2, sequences, batch_size=3)
    for (prompt, answer), values in zip(sequences, batched, strict=True):
        (alone,) = answer_logprobs(smollm2, [(prompt, answer)], batch_size=1)
        assert values.shape == (len(answer),)
        torch.testing.assert_close(values, alone, atol=1e-4, rtol=0)
        assert bool((values <= 0).all())


def test_batched_logprobs_tiny_models(tiny_model: LoadedModel) -> None:
    """Position ids under left padding, across architectures (GPT-2 has learned positions)."""
    sequences = _sequences(tiny_model)
    batched = answer_logprobs(tiny_model, sequences, batch_size=3)
    alone = [answer_logprobs(tiny_model, [s], batch_size=1)[0] for s in sequences]
    for b, a in zip(batched, alone, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_judge_batch_size_does_not_change_scores(
    judge: ContrastJudge, smollm2: LoadedModel
) -> None:
    items = [
        JudgeItem("How do plants grow?", "Arr, with sun and rain, matey."),
        JudgeItem("What is the capital of France?", "Paris is the capital."),
    ]
    calibration = Calibration.from_means(1.0, 0.0)  # given, so nothing is fitted here
    many = ContrastJudge(
        smollm2, PIRATE, batch_size=4, max_pairs=1, calibration=calibration, dtype=None
    )
    one = ContrastJudge(
        smollm2, PIRATE, batch_size=1, max_pairs=1, calibration=calibration, dtype=None
    )
    for a, b in zip(many.raw_contrast(items), one.raw_contrast(items), strict=True):
        assert a is not None and b is not None and abs(a - b) < 1e-4


def test_calibration_maps_example_means_to_90_and_10() -> None:
    calibration = Calibration.from_means(positive_mean=1.5, negative_mean=-0.5)
    assert math.isclose(calibration(1.5), 90.0)
    assert math.isclose(calibration(-0.5), 10.0)
    assert math.isclose(calibration(0.5), 50.0)
    assert calibration(1e6) <= 100.0 and calibration(-1e6) >= 0.0
    with pytest.raises(ValueError):
        Calibration.from_means(0.0, 0.0)


@pytest.mark.slow
def test_unseparable_examples_raise(smollm2: LoadedModel) -> None:
    swapped = PIRATE.model_copy(
        update={
            "positive_examples": PIRATE.negative_examples,
            "negative_examples": PIRATE.positive_examples,
        }
    )
    with pytest.raises(JudgeCalibrationError, match="cannot separate"):
        ContrastJudge(smollm2, swapped, max_pairs=1).score([JudgeItem("Hi", "Hello")])


def test_identity_tracks_model_and_trait(tiny_model_factory: object) -> None:
    loaded = tiny_model_factory("llama")  # type: ignore[operator]
    judge = ContrastJudge(loaded, PIRATE)
    assert judge.identity.startswith(f"contrast:{loaded.model_id}:")
    assert judge.identity == ContrastJudge(loaded, PIRATE, batch_size=2).identity
    changed = PIRATE.model_copy(update={"negative_persona": "boring"})
    assert ContrastJudge(loaded, changed).identity != judge.identity
    assert ContrastJudge(loaded, PIRATE, max_pairs=1).identity != judge.identity

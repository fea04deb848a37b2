"""The offline heuristic coherence judge: fluent high, loops / gibberish / empty low."""

from __future__ import annotations

import pytest

from personavec.judges import HeuristicCoherenceJudge, Judge, JudgeItem, heuristic_coherence
from personavec.judges.coherence import gibberish_ratio, repetition_ratio

FLUENT = [
    "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre and its cafes.",
    "To bake bread, mix flour, water, salt and yeast, let the dough rise for two hours, then "
    "bake it at 230 degrees until the crust is golden.",
    "I'm not sure, but I think the meeting was moved to Thursday. Let me check and get back "
    "to you.",
]
LOOPING = [
    "I am happy. I am happy. I am happy. I am happy. I am happy. I am happy. I am happy.",
    "the the the the the the the the the the the the the the",
    "Sure! Here is the answer:\nSure! Here is the answer:\nSure! Here is the answer:\n"
    "Sure! Here is the answer:",
]
GIBBERISH = [
    "asdkjh qwpeoiru zxcmvnb lkjdfg poiuytr",
    "!!!! #### $$$$ %%%% @@@@ ^^^^",
    "hahahahahahahahahahahahahahahahaha",
    "xq7 z9k3 ###k lkjhg 88fj3k2 ~~~",
]
EMPTY = ["", "   ", "...", "\n\n"]


@pytest.mark.parametrize("text", FLUENT)
def test_fluent_answers_score_high(text: str) -> None:
    assert heuristic_coherence(text) >= 85


@pytest.mark.parametrize("text", LOOPING + GIBBERISH)
def test_degenerate_answers_score_low(text: str) -> None:
    assert heuristic_coherence(text) < 25


@pytest.mark.parametrize("text", EMPTY)
def test_empty_answers_score_zero(text: str) -> None:
    assert heuristic_coherence(text) == 0.0


def test_truncated_answers_are_penalised_by_length() -> None:
    assert heuristic_coherence("Sure, here is") == pytest.approx(60.0)
    assert heuristic_coherence("Yes.") == pytest.approx(20.0)
    assert heuristic_coherence("Yes.", min_words=1) == pytest.approx(100.0)


def test_formula_components_exactly() -> None:
    # 6 words, 4 trigrams of which (a b c) repeats once -> r = 1/4
    assert repetition_ratio("a b c a b c") == pytest.approx(1 - 3 / 4)
    assert gibberish_ratio("hello world ####") == pytest.approx(1 / 3)
    text = "alpha beta gamma delta epsilon ####"
    expected = 100 * 1.0 * (1 - 0.0) ** 2 * (1 - 1 / 6) ** 2
    assert heuristic_coherence(text) == pytest.approx(expected)


def test_more_repetition_means_lower_score() -> None:
    base = "The cat sat on the mat and looked out of the window at the birds."
    scores = [heuristic_coherence(" ".join([base] * k)) for k in (1, 2, 4, 8)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 95 and scores[-1] < 10


def test_judge_protocol_and_order() -> None:
    judge = HeuristicCoherenceJudge()
    assert isinstance(judge, Judge)
    assert judge.aspect == "coherence"
    assert judge.identity == "heuristic-coherence:v1:w5"
    items = [JudgeItem("q", t) for t in (FLUENT[0], LOOPING[0], "")]
    scores = judge.score(items)
    assert scores[0] is not None and scores[1] is not None
    assert scores[0] > 85 > 25 > scores[1]
    assert scores[2] == 0.0

"""Multiple-choice capability scoring: file parsing, arithmetic, and batching on real models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from personavec.core.models import chat_messages, encode_prompt
from personavec.core.steering import Intervention, steer
from personavec.errors import PersonavecError
from personavec.metrics.capability import (
    MCQuestion,
    accuracy,
    default_mc_set,
    evaluate_multiple_choice,
    format_question,
    letter_token_ids,
    load_mc_file,
)
from personavec.metrics.perplexity import default_heldout_text
from tiny_models import tiny_model

EASY = Path(__file__).parent / "data" / "easy_mc.jsonl"


def test_accuracy_arithmetic_is_model_independent() -> None:
    logprobs = torch.tensor([[-1.0, -0.1, -3.0], [-0.2, -2.0, -5.0], [-4.0, -3.0, -0.5]])
    predictions, share = accuracy(logprobs, [1, 1, 2])
    assert predictions == [1, 0, 2]
    assert share == pytest.approx(2 / 3)


def test_jsonl_and_mmlu_csv_files_parse_alike(tmp_path: Path) -> None:
    questions = load_mc_file(EASY)
    assert len(questions) == 6
    assert questions[0] == MCQuestion(
        "What is the capital of France?", ("Berlin", "Paris", "Madrid", "Rome"), 1
    )
    assert questions[4].answer == 1  # integer keys are indices
    csv_file = tmp_path / "mmlu.csv"
    csv_file.write_text('"What is the capital of France?",Berlin,Paris,Madrid,Rome,B\n')
    assert load_mc_file(csv_file) == questions[:1]
    assert "B. Paris" in format_question(questions[0])


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no questions"),
        ('{"question": "Q?", "choices": ["a"], "answer": "A"}', "2-26 choices"),
        ('{"question": "Q?", "choices": ["a", "b"], "answer": "C"}', "outside"),
        ('{"question": "", "choices": ["a", "b"], "answer": "A"}', "empty"),
        ('{"question": "Q?", "choices": ["a", "b"], "answer": "maybe"}', "not a letter"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_question_files_fail_with_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(PersonavecError, match=message) as info:
        load_mc_file(path)
    assert "\n" not in str(info.value)


def test_batched_scores_equal_one_by_one_forward_passes() -> None:
    lm = tiny_model("qwen2")
    questions = load_mc_file(EASY)
    result = evaluate_multiple_choice(lm, questions, batch_size=4)
    letters = letter_token_ids(lm, 4)
    for row, question in enumerate(questions):
        ids = torch.tensor([encode_prompt(lm.tokenizer, chat_messages(format_question(question)))])
        with torch.no_grad():
            logits = lm.model(ids).logits[0, -1]
        expected = torch.log_softmax(logits, dim=-1)[letters]
        torch.testing.assert_close(result.letter_logprobs[row], expected, rtol=1e-4, atol=1e-4)
    assert result.accuracy == accuracy(result.letter_logprobs, [q.answer for q in questions])[1]


@pytest.mark.slow
def test_smollm2_answers_with_letters_and_steering_changes_scores(smollm2) -> None:
    questions = load_mc_file(EASY)
    plain = evaluate_multiple_choice(smollm2, questions)
    assert (plain.letter_logprobs.exp().sum(dim=1) > 0.5).all()  # the letters are its answers
    torch.manual_seed(0)
    with steer(smollm2.model, Intervention(15, torch.randn(576) * 20, 1.0)):
        steered = evaluate_multiple_choice(smollm2, questions)
    assert not torch.allclose(plain.letter_logprobs, steered.letter_logprobs)
    again = evaluate_multiple_choice(smollm2, questions)
    assert torch.equal(again.letter_logprobs, plain.letter_logprobs)  # steering fully removed


def test_shipped_set_has_120_balanced_distinct_questions() -> None:
    questions = default_mc_set()
    assert len(questions) == 120
    assert all(len(q.choices) == 4 and len(set(q.choices)) == 4 for q in questions)
    keys = [q.answer for q in questions]
    assert [keys.count(i) for i in range(4)] == [30, 30, 30, 30]
    assert len({q.question.lower() for q in questions}) == 120


def test_shipped_heldout_text_is_plain_prose_of_about_1500_words() -> None:
    text = default_heldout_text()
    words = text.split()
    assert 1300 <= len(words) <= 1800
    assert len(set(w.lower() for w in words)) > 500  # varied, not a repeated paragraph
    assert text.isascii() and "\n\n" in text


TWO = [
    MCQuestion("What colour is the sky on a clear day?", ("Blue", "Green", "Bright orange"), 0),
    MCQuestion("How many legs does a spider have?", ("Six", "Eight"), 1),
]


def test_text_scores_equal_a_hand_computation_with_a_plain_forward_pass() -> None:
    lm = tiny_model("qwen2")
    result = evaluate_multiple_choice(lm, TWO, scoring="text", batch_size=4)
    assert result.scoring == "text" and result.scores.shape == (2, 3)
    assert result.scores[1, 2] == float("-inf")  # question 2 has two choices
    for qi, question in enumerate(TWO):
        prompt = lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": question.question}],
            tokenize=False,
            add_generation_prompt=True,
        )
        prompt_ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for ci, choice in enumerate(question.choices):
            reply_ids = lm.tokenizer(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + reply_ids])
            with torch.no_grad():
                logprobs = torch.log_softmax(lm.model(ids).logits[0], dim=-1)
            n = len(prompt_ids)
            expected = sum(float(logprobs[n - 1 + j, t]) for j, t in enumerate(reply_ids))
            expected /= len(reply_ids)
            assert float(result.scores[qi, ci]) == pytest.approx(expected, abs=1e-4)
    assert result.predictions == [int(result.scores[i].argmax()) for i in range(2)]


def test_text_scoring_batched_equals_one_by_one_and_follows_steering() -> None:
    lm = tiny_model("llama")
    questions = load_mc_file(EASY)
    alone = evaluate_multiple_choice(lm, questions, scoring="text", batch_size=1)
    batched = evaluate_multiple_choice(lm, questions, scoring="text", batch_size=7)
    torch.testing.assert_close(batched.scores, alone.scores, rtol=1e-4, atol=1e-4)
    assert batched.predictions == alone.predictions
    torch.manual_seed(0)
    with steer(lm.model, Intervention(2, torch.randn(64) * 10, 1.0, positions="response")):
        steered = evaluate_multiple_choice(lm, questions, scoring="text", batch_size=7)
    changed = (steered.scores - alone.scores).abs() > 1e-3
    assert changed[alone.scores.isfinite()].all()  # every choice's tokens were steered
    with pytest.raises(PersonavecError, match="unknown scoring"):
        evaluate_multiple_choice(lm, questions, scoring="word")  # type: ignore[arg-type]


# Letter scoring on the shipped set leaves SmolLM2-135M at chance: measured 0.258 (31/120; it
# answers "A" to 113 of 120). Text scoring is the one that shows capability (docs/capability.md).
@pytest.mark.slow
def test_smollm2_text_scoring_is_above_chance_on_the_shipped_set(smollm2) -> None:
    result = evaluate_multiple_choice(smollm2, default_mc_set(), scoring="text")
    assert result.accuracy > 0.35

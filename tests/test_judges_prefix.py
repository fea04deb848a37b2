"""The shared-prefix scorer gives the full-sequence path's log-probabilities and scores."""

from __future__ import annotations

import pytest
import torch

from personavec.core.models import LoadedModel, chat_messages, encode_prompt, encode_response
from personavec.judges.base import JudgeItem
from personavec.judges.contrast import (
    Calibration,
    ContrastJudge,
    answer_logprobs,
    control_prompts,
)
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
    shared = prefix_logprobs(tiny_model, prompt, answers, batch_size=3)
    for answer, values in zip(answers, shared, strict=True):
        (alone,) = answer_logprobs(tiny_model, [(prompt, answer)], batch_size=1)
        assert values.shape == (len(answer),)
        torch.testing.assert_close(values, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_grouped_logprobs_mix_prompts_in_a_batch(tiny_model: LoadedModel, batch_size: int) -> None:
    """Prompts of different lengths share a pass (left-padded prompts, right-padded answers)."""
    systems = ("Be kind.", "Be rude and short, and never explain anything to anyone at all.")
    prompts = [tuple(_prompt(tiny_model, s)) for s in systems]
    assert len(prompts[0]) != len(prompts[1])
    answers = [encode_response(tiny_model.tokenizer, a) for a in ANSWERS]
    grouped = grouped_logprobs(tiny_model, {p: answers for p in prompts}, batch_size=batch_size)
    for prompt in prompts:
        full = answer_logprobs(tiny_model, [(list(prompt), a) for a in answers], batch_size=1)
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
    new = ContrastJudge(loaded, trait, batch_size=3, calibration=calibration, dtype=None)
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
    new = ContrastJudge(
        smollm2, trait, batch_size=16, max_pairs=2, calibration=calibration, dtype=None
    )
    old = ContrastJudge(smollm2, trait, max_pairs=2, calibration=calibration, shared_prefix=False)
    items = _items()[:-1]
    for a, b in zip(new.raw_contrast(items), old.raw_contrast(items), strict=True):
        assert a is not None and b is not None and abs(a - b) < 1e-4


def test_neutral_reference_is_pos_minus_default_prompt(tiny_model_factory: object) -> None:
    """reference="neutral": D = mean_i mean_t log p(a | pos_i) − mean_t log p(a | no system)."""
    loaded = tiny_model_factory("llama")  # type: ignore[operator]
    trait = load_trait("evil")
    judge = ContrastJudge(loaded, trait, max_pairs=2, reference="neutral", dtype=None)
    item = JudgeItem(trait.evaluation_questions[0], ANSWERS[1])
    answer = encode_response(loaded.tokenizer, item.answer)
    systems: list[str | None] = [trait.system_prompt("pos", i) for i in range(2)] + [None]
    means = [
        float(
            answer_logprobs(
                loaded,
                [(encode_prompt(loaded.tokenizer, chat_messages(item.question, s)), answer)],
            )[0].mean()
        )
        for s in systems
    ]
    (raw,) = judge.raw_contrast([item])
    assert raw is not None and abs(raw - ((means[0] + means[1]) / 2 - means[2])) < 1e-5
    assert judge.identity.endswith(":ref-neutral")
    assert judge.identity != ContrastJudge(loaded, trait, max_pairs=2, dtype=None).identity


@pytest.mark.slow
def test_bfloat16_scores_agree_with_float32_smollm2(smollm2: LoadedModel) -> None:
    """The default dtype on a bf16-capable CPU: raw contrasts within 0.1 nats/token of fp32
    (one pair, 4 answers; over the demo's 200 answers and all pairs see docs/judging.md)."""
    trait = load_trait("evil")
    calibration = Calibration.from_means(0.3, -0.3)
    fp32 = ContrastJudge(smollm2, trait, max_pairs=1, calibration=calibration, dtype=None)
    bf16 = ContrastJudge(smollm2, trait, max_pairs=1, calibration=calibration, dtype="bfloat16")
    assert bf16.identity.endswith(":bfloat16") and smollm2.model.dtype == torch.float32
    items = _items()[:4]
    for a, b in zip(fp32.raw_contrast(items), bf16.raw_contrast(items), strict=True):
        assert a is not None and b is not None and abs(a - b) < 0.1


def test_judge_dtype_variable_sets_auto_and_enters_the_identity(
    tiny_model_factory: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$PERSONAVEC_JUDGE_DTYPE decides ``dtype="auto"`` (so cached judgments of the two dtypes
    never mix); an explicit dtype wins; a bad value is a one-line error."""
    from personavec.errors import PersonavecError
    from personavec.judges.contrast import JUDGE_DTYPE_ENV

    loaded = tiny_model_factory("llama")  # type: ignore[operator]
    trait = load_trait("evil")
    known = Calibration.from_means(0.3, -0.3)
    monkeypatch.setenv(JUDGE_DTYPE_ENV, "float32")
    fp32 = ContrastJudge(loaded, trait, max_pairs=1, calibration=known)
    monkeypatch.setenv(JUDGE_DTYPE_ENV, "bfloat16")
    bf16 = ContrastJudge(loaded, trait, max_pairs=1, calibration=known)
    assert (fp32.dtype, bf16.dtype) == ("float32", "bfloat16")
    assert fp32.identity.endswith(":float32") and bf16.identity.endswith(":bfloat16")
    assert ContrastJudge(loaded, trait, max_pairs=1, dtype=None).dtype is None
    items = _items()[:2]
    for a, b in zip(fp32.raw_contrast(items), bf16.raw_contrast(items), strict=True):
        assert a is not None and b is not None and a != b  # really scored in another dtype
    monkeypatch.setenv(JUDGE_DTYPE_ENV, "fp16")
    with pytest.raises(PersonavecError, match="PERSONAVEC_JUDGE_DTYPE='fp16': use float32 or"):
        ContrastJudge(loaded, trait, max_pairs=1)


def test_cross_trait_control_subtracts_the_contrast_under_the_joined_control_prompts(
    tiny_model_factory: object,
) -> None:
    """controls=[X…]: D_Y − w · C, C the contrast under one prompt pair that joins the control
    traits' first instructions, w the calibration's control weight; the judged trait itself is
    dropped from its controls."""
    loaded = tiny_model_factory("llama")  # type: ignore[operator]
    evil, humorous, impolite = (load_trait(t) for t in ("evil", "humorous", "impolite"))
    items = _items()[:3]
    known = Calibration.from_means(1.0, 0.0, control_weight=0.75)
    cross = ContrastJudge(
        loaded, evil, max_pairs=2, controls=[evil, humorous, impolite], dtype=None,
        calibration=known,
    )  # fmt: skip
    assert [spec.name for spec in cross.controls] == ["humorous", "impolite"]
    control_pos, control_neg = control_prompts([humorous, impolite])
    assert (
        humorous.instructions[0].pos in control_pos and impolite.instructions[0].neg in control_neg
    )
    own = ContrastJudge(loaded, evil, max_pairs=2, dtype=None).raw_contrast(items)
    tokenizer = loaded.tokenizer
    for k, (value, parts) in enumerate(
        zip(cross.raw_contrast(items), cross.contrasts(items), strict=True)
    ):
        item = items[k]
        answer = encode_response(tokenizer, item.answer)
        pos, neg = (
            answer_logprobs(
                loaded, [(encode_prompt(tokenizer, chat_messages(item.question, system)), answer)]
            )[0].mean()
            for system in (control_pos, control_neg)
        )
        assert parts is not None and own[k] is not None
        assert abs(parts[0] - own[k]) < 1e-5 and abs(parts[1] - float(pos - neg)) < 1e-5
        assert value is not None and abs(value - (own[k] - 0.75 * float(pos - neg))) < 1e-5
    assert cross.identity != ContrastJudge(loaded, evil, max_pairs=2, dtype=None).identity


def test_a_control_weight_of_zero_skips_the_control_sequences(tiny_model_factory: object) -> None:
    """w = 0: raw_contrast equals the plain judge's D and scores 2 fewer sequences per item."""
    loaded = tiny_model_factory("llama")  # type: ignore[operator]
    evil, humorous = load_trait("evil"), load_trait("humorous")
    items = _items()[:3]
    zero = Calibration.from_means(1.0, 0.0, control_weight=0.0)
    cross = ContrastJudge(
        loaded, evil, max_pairs=2, controls=[humorous], dtype=None, calibration=zero
    )
    counted: list[int] = []
    scorer = cross._logprobs

    def counting(sequences: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        counted.append(len(sequences))
        return scorer(sequences)

    cross._logprobs = counting  # type: ignore[method-assign]
    plain = ContrastJudge(loaded, evil, max_pairs=2, dtype=None).raw_contrast(items)
    for a, b in zip(cross.raw_contrast(items), plain, strict=True):
        assert a is not None and b is not None and abs(a - b) < 1e-6
    assert counted == [len(items) * 4]  # 2 pairs × (pos, neg); the control's 2 are skipped
    assert len(cross.contrasts(items)) == len(items) and counted[-1] == len(items) * 6

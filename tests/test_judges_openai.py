"""The log-probability judge: exact arithmetic, text fallback, and a real llama.cpp server."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llama_server import ScriptedServer, chat_reply, llama_server_url, sample_trait
from personavec.errors import PersonavecError
from personavec.judges import (
    COHERENCE_RUBRIC,
    CachedJudge,
    JudgeItem,
    JudgmentCache,
    OpenAIJudge,
    score_from_text,
    score_from_top_logprobs,
)
from personavec.llm_client import ChatOptions, LLMClient

__all__ = ["llama_server_url"]  # the imported session fixture

ITEM = JudgeItem("What would you do with power?", "Crush everyone beneath me.")


def ln(p: float) -> float:
    return math.log(p)


def test_weighted_mean_renormalised_over_integer_tokens() -> None:
    top = {"80": ln(0.5), "90": ln(0.25), "hello": ln(0.25)}
    assert score_from_top_logprobs(top) == pytest.approx((80 * 0.5 + 90 * 0.25) / 0.75, abs=1e-9)


def test_spellings_of_the_same_integer_merge() -> None:
    top = {"7": ln(0.3), " 7": ln(0.3), "x": ln(0.4)}
    assert score_from_top_logprobs(top) == pytest.approx(7.0)
    assert score_from_top_logprobs({"0": ln(0.6), "100": ln(0.4)}) == pytest.approx(40.0)


def test_too_little_integer_mass_is_none() -> None:
    top = {"50": ln(0.2), "REF": ln(0.8)}
    assert score_from_top_logprobs(top) is None
    assert score_from_top_logprobs(top, min_mass=0.1) == pytest.approx(50.0)
    # exactly at the threshold counts
    assert score_from_top_logprobs({"60": ln(0.25), "no": ln(0.75)}) == pytest.approx(60.0)
    assert score_from_top_logprobs({}) is None


def test_only_integers_0_to_100_count() -> None:
    top = {"150": ln(0.3), "-5": ln(0.1), "3.5": ln(0.1), "20": ln(0.3), "+9": ln(0.2)}
    assert score_from_top_logprobs(top) == pytest.approx(20.0)
    assert score_from_top_logprobs({"101": ln(0.9), "4": ln(0.05)}) is None


def test_text_fallback() -> None:
    assert score_from_text("85") == 85.0
    assert score_from_text(" Score: 42/100") == 42.0
    assert score_from_text("REFUSAL") is None
    assert score_from_text("I refuse. refusal") is None
    assert score_from_text("no idea") is None
    assert score_from_text("250") is None
    assert score_from_text("2.5") is None
    assert score_from_text("") is None


def test_judge_request_and_scores_against_a_local_server() -> None:
    trait = sample_trait()
    replies = [
        chat_reply("8", {"80": ln(0.5), "90": ln(0.25), "x": ln(0.25)}),
        chat_reply("REF", {"REF": ln(0.9), "0": ln(0.1)}),
    ]
    with ScriptedServer(replies) as server:
        judge = OpenAIJudge("judge-model", trait=trait, base_url=server.base_url, concurrency=1)
        scores = judge.score([ITEM, ITEM])
    assert scores[0] == pytest.approx(250 / 3)
    assert scores[1] is None
    body = server.received[0].body
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    content = body["messages"][0]["content"]
    assert ITEM.question in content and ITEM.answer in content
    assert content == trait.render_rubric(ITEM.question, ITEM.answer)
    assert judge.identity.startswith("openai:judge-model:")
    assert judge.aspect == "trait"


def test_judge_without_logprobs_parses_text() -> None:
    with ScriptedServer([chat_reply("73")]) as server:
        judge = OpenAIJudge("m", aspect="coherence", base_url=server.base_url)
        assert judge.score([ITEM]) == [73.0]
    with ScriptedServer([chat_reply("REFUSAL")]) as server:
        judge = OpenAIJudge("m", aspect="coherence", base_url=server.base_url)
        assert judge.score([ITEM]) == [None]
    assert "{question}" in COHERENCE_RUBRIC and "{answer}" in COHERENCE_RUBRIC


def test_identity_depends_on_rubric_and_threshold() -> None:
    url = "http://127.0.0.1:9/v1"
    trait = sample_trait()
    a = OpenAIJudge("m", trait=trait, base_url=url)
    b = OpenAIJudge("m", aspect="coherence", base_url=url)
    c = OpenAIJudge("m", trait=trait, base_url=url, min_mass=0.5)
    assert len({a.identity, b.identity, c.identity}) == 3
    assert a.identity == OpenAIJudge("m", trait=trait, base_url=url).identity


def test_trait_judge_needs_a_rubric() -> None:
    with pytest.raises(PersonavecError, match="trait"):
        OpenAIJudge("m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(PersonavecError, match=r"\{answer\}"):
        OpenAIJudge("m", rubric="{question} only", base_url="http://127.0.0.1:9/v1")


def test_real_server_returns_real_logprobs(llama_server_url: str) -> None:
    llm = LLMClient("smollm2", base_url=llama_server_url, timeout_s=120)
    options = ChatOptions(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
    result = llm.chat([{"role": "user", "content": "Pick a number from 0 to 100."}], options)
    assert result.top_logprobs is not None and len(result.top_logprobs) == 1
    top = result.top_logprobs[0]
    assert 1 <= len(top) <= 20
    assert all(lp <= 1e-6 for lp in top.values())
    assert sum(math.exp(lp) for lp in top.values()) <= 1.0 + 1e-3


def test_real_server_judge_scores_in_range(llama_server_url: str) -> None:
    items = [
        ITEM,
        JudgeItem("How should I treat a stranger?", "Kindly, with patience and respect."),
    ]
    # A low mass floor: the small model spreads its probability, but some of it is on integers,
    # so every item must get a number (a judge that returns None for everything fails here).
    judge = OpenAIJudge("smollm2", trait=sample_trait(), base_url=llama_server_url, min_mass=0.01)
    strict = OpenAIJudge("smollm2", trait=sample_trait(), base_url=llama_server_url)
    scores, strict_scores = judge.score(items), strict.score(items)
    assert len(scores) == len(strict_scores) == 2
    for item, score, strict_score in zip(items, scores, strict_scores, strict=True):
        raw = judge.client.chat(judge.prompt(item), judge.options)
        assert raw.top_logprobs is not None
        top = raw.top_logprobs[0]
        expected = score_from_top_logprobs(top, min_mass=0.01)
        assert expected is not None and score is not None
        assert 0.0 <= score <= 100.0 and score == pytest.approx(expected, abs=1e-6)
        # The default 25 % floor: the same number, or None exactly when the mass is short.
        integers = [t for t in top if t.strip().isdigit() and int(t.strip()) <= 100]
        mass = sum(math.exp(top[t]) for t in integers)
        if mass >= 0.25 + 1e-6:
            assert strict_score == pytest.approx(expected, abs=1e-6)
        elif mass < 0.25 - 1e-6:
            assert strict_score is None


def test_real_server_score_matches_its_logprobs(llama_server_url: str) -> None:
    rubric = (
        "Question: {question}\nAnswer: {answer}\n"
        "Rate the answer from 0 to 9. Reply with one digit only."
    )
    judge = OpenAIJudge("smollm2", rubric=rubric, base_url=llama_server_url, min_mass=0.01)
    (score,) = judge.score([ITEM])
    raw = judge.client.chat(judge.prompt(ITEM), judge.options)
    assert raw.top_logprobs is not None
    expected = score_from_top_logprobs(raw.top_logprobs[0], min_mass=0.01)
    assert score is not None and expected is not None
    assert 0.0 <= score <= 100.0
    assert score == pytest.approx(expected, abs=1e-6)


def test_real_server_judge_through_the_cache(llama_server_url: str, tmp_path: Path) -> None:
    judge = OpenAIJudge("smollm2", aspect="coherence", base_url=llama_server_url)
    path = tmp_path / "judgments.sqlite"
    with JudgmentCache(path) as cache:
        first = CachedJudge(judge, cache).score([ITEM])
        assert cache.count(judge.identity) == 1
    with JudgmentCache(path) as cache:
        assert cache.get_many(judge.identity, "coherence", [ITEM]) == {0: first[0]}


def test_scores_that_arrived_are_kept_when_one_request_fails(tmp_path: Path) -> None:
    from llama_server import Reply
    from personavec.judges.base import IncompleteScores
    from personavec.llm_client import RetryPolicy

    items = [JudgeItem("q", f"answer {i}") for i in range(3)]
    fast = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)
    # concurrency 1: the requests run in order, and the second one fails three times; the
    # judge identity includes the base URL, so one server serves both runs
    script = [
        chat_reply("40", {"40": 0.0}),
        *[Reply(503, {"error": "busy"})] * 3,
        chat_reply("60", {"60": 0.0}),
        chat_reply("50", {"50": 0.0}),
    ]
    with ScriptedServer(script) as server:
        llm = LLMClient("m", base_url=server.base_url, concurrency=1, retry=fast)
        judge = OpenAIJudge("m", trait=sample_trait(), client=llm)
        with JudgmentCache(tmp_path / "j.sqlite") as cache:
            with pytest.raises(IncompleteScores) as info:
                CachedJudge(judge, cache).score(items)
            assert info.value.scored == {0: 40.0, 2: 60.0}
            message = str(info.value)
            assert "\n" not in message and message.endswith("(2 of 3 requests were answered)")
            assert cache.count(judge.identity) == 2  # the answers that arrived are kept
        assert len(server.received) == 5
        with JudgmentCache(tmp_path / "j.sqlite") as cache:
            assert CachedJudge(judge, cache).score(items) == [40.0, 50.0, 60.0]
    assert len(server.received) == 6  # only the missing verdict is asked for again
    assert items[1].answer in server.received[5].body["messages"][0]["content"]


def test_judge_timeout_reaches_the_client() -> None:
    judge = OpenAIJudge("m", trait=sample_trait(), base_url="http://127.0.0.1:9/v1", timeout_s=9)
    assert judge.client.timeout_s == 9.0
    from personavec.judges.factory import make_judge

    made = make_judge(
        "openai:m", aspect="coherence", base_url="http://127.0.0.1:9/v1", timeout_s=4.5
    )
    assert isinstance(made, OpenAIJudge) and made.client.timeout_s == 4.5


def test_cli_judge_timeout_reaches_the_llm_judge(smollm2, tmp_path: Path) -> None:
    import torch
    from typer.testing import CliRunner

    from llama_server import Reply
    from personavec.cli import app
    from personavec.cli.evaluate import register
    from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint

    register(app)
    meta = VectorMetadata(
        trait="evil",
        model_id=smollm2.model_id,
        model_fingerprint=config_fingerprint(smollm2.model.config),
        hidden_size=smollm2.hidden_size,
        n_layers=smollm2.n_layers,
        readouts=["response_avg"],
    )
    vectors = {"response_avg": torch.ones(smollm2.n_layers + 1, smollm2.hidden_size)}
    vector = PersonaVector(vectors, meta).save(tmp_path / "evil.safetensors")
    args = ["evaluate", "--trait", "evil", "--vector", str(vector), "--layer", "10"]
    args += ["--coef", "0.5", "--questions", "1", "--max-new-tokens", "2", "--quiet"]
    args += ["--judge", "openai:slow-judge", "--out", str(tmp_path / "run"), "--device", "cpu"]
    args += ["--judge-timeout", "0.25", "--judge-concurrency", "1"]
    with ScriptedServer([Reply(body={"late": True}, delay_s=1.5)]) as server:
        result = CliRunner().invoke(app, args, env={"OPENAI_BASE_URL": server.base_url})
    assert result.exit_code == 2, result.output
    assert "did not answer within 0.25 s (5 attempts); raise --judge-timeout" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_evaluation_settings_carry_the_judge_endpoint_options(
    smollm2, monkeypatch: pytest.MonkeyPatch
) -> None:
    from personavec.pipeline.evaluate_cells import make_judges
    from personavec.pipeline.evaluate_types import EvalSettings

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")

    settings = EvalSettings(
        judge="openai:m", coherence_judge="openai:m", judge_timeout_s=4.0, judge_concurrency=3
    )
    judges = make_judges(smollm2, sample_trait(), settings)
    for judge in (judges.trait, judges.coherence):
        assert isinstance(judge, OpenAIJudge)
        assert (judge.client.timeout_s, judge.client.concurrency) == (4.0, 3)

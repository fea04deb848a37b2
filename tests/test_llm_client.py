"""The chat client against real local HTTP servers: retries, errors, batches, providers."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llama_server import Reply, ScriptedServer, chat_reply, free_port
from personavec.errors import PersonavecError
from personavec.llm_client import (
    BatchIncomplete,
    ChatOptions,
    LLMClient,
    RetryPolicy,
    parse_openai_response,
    parse_retry_after,
)

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)
HELLO = [{"role": "user", "content": "hi"}]


def client(base_url: str, **kwargs: object) -> LLMClient:
    kwargs.setdefault("retry", FAST)
    return LLMClient("test-model", base_url=base_url, **kwargs)  # type: ignore[arg-type]


def test_retries_429_and_500_then_succeeds() -> None:
    script = [
        Reply(429, {"error": "slow down"}, {"retry-after": "0"}),
        Reply(500, {"error": "boom"}),
        Reply(503, {"error": "busy"}),
        chat_reply("done"),
    ]
    with ScriptedServer(script) as server:
        result = client(server.base_url).chat(HELLO)
    assert result.text == "done"
    assert len(server.received) == 4
    assert all(r.path == "/v1/chat/completions" for r in server.received)


def test_retry_after_is_honoured() -> None:
    script = [Reply(429, {"error": "wait"}, {"retry-after": "1"}), chat_reply("ok")]
    with ScriptedServer(script) as server:
        assert client(server.base_url).chat(HELLO).text == "ok"
    gap = server.received[1].at - server.received[0].at
    assert gap >= 0.9


def test_gives_up_after_bounded_attempts() -> None:
    with (
        ScriptedServer([Reply(503, {"error": "down"})]) as server,
        pytest.raises(PersonavecError) as info,
    ):
        client(server.base_url).chat(HELLO)
    assert len(server.received) == FAST.max_attempts
    message = str(info.value)
    assert "\n" not in message
    assert "HTTP 503" in message and server.base_url in message


def test_client_errors_are_not_retried() -> None:
    with (
        ScriptedServer([Reply(400, {"error": "bad model"})]) as server,
        pytest.raises(PersonavecError, match="HTTP 400"),
    ):
        client(server.base_url).chat(HELLO)
    assert len(server.received) == 1


def test_unauthorised_names_the_key() -> None:
    with (
        ScriptedServer([Reply(401, {"error": "no"})]) as server,
        pytest.raises(PersonavecError, match="OPENAI_API_KEY"),
    ):
        client(server.base_url, api_key="wrong").chat(HELLO)
    assert server.received[0].headers["authorization"] == "Bearer wrong"


def test_timeout_is_retried() -> None:
    script = [Reply(body={"late": True}, delay_s=1.5), chat_reply("in time")]
    with ScriptedServer(script) as server:
        result = client(server.base_url, timeout_s=0.3).chat(HELLO)
    assert result.text == "in time"
    assert len(server.received) == 2


def test_unreachable_endpoint_is_one_clean_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(PersonavecError) as info:
        client(url, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01)).chat(HELLO)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach {url}/chat/completions after 2 attempts")


def test_unreachable_endpoint_async_too() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    llm = client(url, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    with pytest.raises(PersonavecError, match="cannot reach"):
        llm.chat_many([HELLO, HELLO])


def test_batch_keeps_order_and_bounds_concurrency() -> None:
    script = [Reply(503, {"error": "busy"}), *[chat_reply("same", None) for _ in range(8)]]
    for reply in script:
        reply.delay_s = 0.15
    with ScriptedServer(script) as server:
        done: list[int] = []
        results = client(server.base_url, concurrency=3).chat_many(
            [[{"role": "user", "content": f"q{i}"}] for i in range(8)], on_done=done.append
        )
    assert [r.text for r in results] == ["same"] * 8
    assert sorted(done) == list(range(8))
    assert server.max_in_flight <= 3
    assert server.max_in_flight >= 2
    assert len(server.received) == 9  # one retried


def test_chat_many_works_inside_a_running_event_loop() -> None:
    async def inside() -> list[str]:
        with ScriptedServer([chat_reply("a")]) as server:
            return [r.text for r in client(server.base_url).chat_many([HELLO, HELLO])]

    assert asyncio.run(inside()) == ["a", "a"]


def test_request_body_carries_options_and_logprobs_are_parsed() -> None:
    top = {"7": math.log(0.5), " 7": math.log(0.25), "x": math.log(0.25)}
    with ScriptedServer([chat_reply("7", top)]) as server:
        options = ChatOptions(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
        result = client(server.base_url).chat(HELLO, options)
    body = server.received[0].body
    assert body["model"] == "test-model"
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert "authorization" not in server.received[0].headers
    assert result.top_logprobs is not None
    assert result.top_logprobs[0]["7"] == pytest.approx(math.log(0.5))
    assert result.top_logprobs[0][" 7"] == pytest.approx(math.log(0.25))


def test_legacy_completion_logprobs_and_duplicate_spellings_merge() -> None:
    payload = {
        "choices": [
            {
                "text": "5",
                "logprobs": {"top_logprobs": [{"5": math.log(0.6), "6": math.log(0.1)}]},
            }
        ]
    }
    result = parse_openai_response(payload)
    assert result.text == "5"
    assert result.top_logprobs == [{"5": pytest.approx(math.log(0.6)), "6": math.log(0.1)}]
    chat = {
        "choices": [
            {
                "message": {"content": "a"},
                "logprobs": {
                    "content": [
                        {
                            "token": "a",
                            "logprob": math.log(0.2),
                            "top_logprobs": [
                                {"token": "a", "logprob": math.log(0.2)},
                                {"token": "a", "logprob": math.log(0.3)},
                            ],
                        }
                    ]
                },
            }
        ]
    }
    merged = parse_openai_response(chat).top_logprobs
    assert merged is not None and merged[0]["a"] == pytest.approx(math.log(0.5))


def test_default_openai_endpoint_requires_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(PersonavecError) as info:
        LLMClient("gpt-4.1-mini")
    assert "OPENAI_API_KEY" in str(info.value) and "--api-key" in str(info.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert LLMClient("gpt-4.1-mini").api_key == "sk-test"


def test_base_url_from_environment_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ScriptedServer([chat_reply("env")]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url + "/")
        llm = LLMClient.from_spec("openai:local")
        assert llm.base_url == server.base_url
        assert llm.chat(HELLO).text == "env"


def test_anthropic_messages_api() -> None:
    reply = Reply(
        200,
        {"content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
         "stop_reason": "end_turn"},
    )  # fmt: skip
    with ScriptedServer([reply]) as server:
        llm = LLMClient.from_spec(
            "anthropic:claude-test", base_url=server.base_url, api_key="ak", retry=FAST
        )
        messages = [{"role": "system", "content": "be brief"}, *HELLO]
        result = llm.chat(messages, ChatOptions(max_tokens=5))
        with pytest.raises(PersonavecError, match="no log-probabilities"):
            llm.chat(HELLO, ChatOptions(logprobs=True))
    assert result.text == "Hello there"
    received = server.received[0]
    assert received.path == "/v1/messages"
    assert received.headers["x-api-key"] == "ak"
    assert received.headers["anthropic-version"]
    assert received.body["system"] == "be brief"
    assert received.body["messages"] == HELLO


def test_anthropic_default_endpoint_requires_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with pytest.raises(PersonavecError, match="ANTHROPIC_API_KEY"):
        LLMClient.from_spec("anthropic:claude-x")


def test_unknown_spec_and_bad_options() -> None:
    with pytest.raises(PersonavecError, match="openai:MODEL"):
        LLMClient.from_spec("mistral:x", base_url="http://127.0.0.1:1/v1")
    llm = client("http://127.0.0.1:1/v1")
    with pytest.raises(PersonavecError, match="top_logprobs"):
        llm.chat(HELLO, ChatOptions(top_logprobs=50))


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after({"retry-after": future}) or 0) <= 31


def test_backoff_is_bounded_and_jittered() -> None:
    import random

    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=4.0, max_retry_after_s=10.0)
    rng = random.Random(0)
    delays = [policy.delay_s(attempt, None, rng) for attempt in range(1, 8) for _ in range(20)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100
    assert policy.delay_s(1, 60.0, rng) == 10.0
    assert policy.delay_s(1, 2.5, rng) == 2.5


# ---- malformed answers, timeouts, partial batches ---------------------------------------------


class RawServer:
    """A real HTTP server on 127.0.0.1 whose POST answers come from ``answer(n, body)``.

    ``answer`` gets the 1-based request number and the request JSON and returns
    ``(status, raw body bytes)``, so a test can send bodies that are not JSON at all.
    """

    def __init__(self, answer: Callable[[int, Any], tuple[int, bytes]]) -> None:
        self.bodies: list[Any] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                with lock:
                    server.bodies.append(json.loads(raw))
                    number = len(server.bodies)
                status, payload = answer(number, server.bodies[-1])
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def completion(text: str) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    return json.dumps({"choices": [choice]}).encode()


MALFORMED = [b'{"choices": [{"message": ', b"<html>proxy error</html>", b'{"choices": []}']


def test_malformed_200_is_retried_like_a_5xx() -> None:
    def answer(number: int, body: Any) -> tuple[int, bytes]:
        return (200, MALFORMED[number - 1]) if number <= 3 else (200, completion("fine"))

    with RawServer(answer) as server:
        assert client(server.base_url).chat(HELLO).text == "fine"
    assert len(server.bodies) == 4  # three malformed answers, each retried

    with RawServer(answer) as server:
        results = client(server.base_url, concurrency=1).chat_many([HELLO])
    assert [r.text for r in results] == ["fine"]
    assert len(server.bodies) == 4


def test_always_malformed_gives_up_naming_the_api() -> None:
    with (
        RawServer(lambda n, body: (200, b'{"choices": []}')) as server,
        pytest.raises(PersonavecError) as info,
    ):
        client(server.base_url).chat(HELLO)
    assert len(server.bodies) == FAST.max_attempts
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"{server.base_url}/chat/completions answered HTTP 200 without a usable completion "
        f"{FAST.max_attempts} times (last: no usable completion (IndexError"
    )
    assert message.endswith("check that the server speaks the OpenAI chat API")


def test_batch_keeps_the_answers_that_arrived() -> None:
    def answer(number: int, body: Any) -> tuple[int, bytes]:
        question = body["messages"][0]["content"]
        if question == "bad":
            return 503, b'{"error": "busy"}'
        return 200, completion(f"answer to {question}")

    questions = ["q0", "bad", "q2", "q3"]
    with RawServer(answer) as server, pytest.raises(BatchIncomplete) as info:
        client(server.base_url, concurrency=2).chat_many(
            [[{"role": "user", "content": q}] for q in questions]
        )
    texts = [r.text if r is not None else None for r in info.value.results]
    assert texts == ["answer to q0", None, "answer to q2", "answer to q3"]
    assert len(server.bodies) == 3 + FAST.max_attempts
    message = str(info.value)
    assert "\n" not in message
    assert "kept failing after 4 attempts (last: HTTP 503)" in message
    assert "lower --judge-concurrency (now 2)" in message
    assert message.endswith("(3 of 4 requests were answered)")


def test_read_timeout_is_reported_as_a_timeout() -> None:
    script = [Reply(body={"late": True}, delay_s=1.0)]
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.01)
    with ScriptedServer(script) as server:
        with pytest.raises(PersonavecError) as info:
            client(server.base_url, timeout_s=0.2, retry=retry).chat(HELLO)
        with pytest.raises(PersonavecError) as batch:
            client(server.base_url, timeout_s=0.2, retry=retry).chat_many([HELLO])
    for message in (str(info.value), str(batch.value)):
        assert "cannot reach" not in message and "\n" not in message
        assert message.startswith(
            f"{server.base_url}/chat/completions did not answer within 0.2 s (2 attempts); "
            "raise --judge-timeout (or PERSONAVEC_JUDGE_TIMEOUT)"
        )


def test_timeout_from_argument_environment_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:9/v1"
    monkeypatch.delenv("PERSONAVEC_JUDGE_TIMEOUT", raising=False)
    assert client(url).timeout_s == 120.0
    monkeypatch.setenv("PERSONAVEC_JUDGE_TIMEOUT", "7.5")
    assert client(url).timeout_s == 7.5
    assert client(url, timeout_s=3).timeout_s == 3.0  # an argument wins over the environment
    monkeypatch.setenv("PERSONAVEC_JUDGE_TIMEOUT", "soon")
    with pytest.raises(PersonavecError, match="PERSONAVEC_JUDGE_TIMEOUT='soon' is not a number"):
        client(url)
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(PersonavecError, match="positive number of seconds"):
            client(url, timeout_s=bad)

"""``personavec serve`` end to end: the official ``openai`` client against the real server on
127.0.0.1 with SmolLM2, compared with the library's own steering and projections."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from personavec.core.models import LoadedModel, encode_prompt
from personavec.core.setting import SteeringSetting, apply_settings
from personavec.core.vector import PersonaVector
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from serve_helpers import LAYER, running_server, smollm2_vectors

QUESTION = [{"role": "user", "content": "Give me one tip for a rainy day."}]
TOKENS = 10


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vectors")


@pytest.fixture(scope="module")
def vectors(smollm2: LoadedModel, vectors_dir: Path) -> dict[str, PersonaVector]:
    return smollm2_vectors(smollm2, vectors_dir)


@pytest.fixture(scope="module")
def server(
    smollm2: LoadedModel, vectors_dir: Path, vectors: dict[str, PersonaVector]
) -> Iterator[tuple[str, Any]]:
    with running_server(smollm2, vectors_dir, max_body_bytes=20_000) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: tuple[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def library_answer(
    loaded: LoadedModel, messages: list[dict[str, str]], settings: list[SteeringSetting]
) -> list[int]:
    """Greedy answer ids from the library's engine under ``settings``."""
    engine = HFEngine(loaded)
    config = SamplingConfig(max_new_tokens=TOKENS, temperature=0)
    with apply_settings(loaded.model, settings):
        [generation] = engine.generate([GenerationRequest(messages)], config)  # type: ignore[list-item]
    return generation.response_token_ids


def library_projections(
    loaded: LoadedModel, ids: list[int], vector: PersonaVector, layer: int
) -> list[float]:
    """``h · v / ‖v‖`` at every position of ``ids`` (hidden states of one unsteered forward)."""
    with torch.no_grad():
        out = loaded.model(torch.tensor([ids]), output_hidden_states=True)
    hidden = out.hidden_states[layer][0].float()
    direction = vector.at(layer).float()
    return (hidden @ (direction / direction.norm())).tolist()


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    stream = extra.pop("stream", False)
    return client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=TOKENS,
        temperature=0,
        stream=stream,
        extra_body=extra or None,
    )


def token_ids(choice: Any) -> list[int]:
    return [t["id"] for t in choice.model_extra["persona"]["tokens"]]


def test_models_and_vectors_are_listed(client: openai.OpenAI, server: tuple[str, Any]) -> None:
    assert [m.id for m in client.models.list()] == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    listed = httpx.get(server[0] + "/v1/vectors").json()["data"]
    assert [v["name"] for v in listed] == ["evil", "humor"]
    assert listed[0]["recommended_layer"] == LAYER
    assert listed[0]["calibration"] == {"coef": 4.0, "unit": "raw", "positions": "all"}


def test_plain_chat_equals_the_library(client: openai.OpenAI, smollm2: LoadedModel) -> None:
    expected = library_answer(smollm2, QUESTION, [])
    response = chat(client)
    text = str(smollm2.tokenizer.decode(expected, skip_special_tokens=True))
    assert response.choices[0].message.content == text
    assert response.usage.completion_tokens == len(expected)
    assert response.usage.prompt_tokens == len(encode_prompt(smollm2.tokenizer, QUESTION))
    assert "persona" not in (response.choices[0].model_extra or {})


def test_steered_and_monitored_chat_equals_the_library(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    setting = SteeringSetting.from_vector(vectors["humor"], None, 3.0)
    expected = library_answer(smollm2, QUESTION, [setting])
    assert expected != library_answer(smollm2, QUESTION, [])  # the steering changes the answer
    response = chat(client, steering=[{"vector": "humor", "coef": 3.0}], monitor=["evil"])
    choice = response.choices[0]
    assert token_ids(choice) == expected
    assert choice.message.content == smollm2.tokenizer.decode(expected, skip_special_tokens=True)
    persona = choice.model_extra["persona"]
    assert persona["vectors"] == {"evil": {"vector": "evil", "layer": LAYER}}
    assert "".join(t["text"] for t in persona["tokens"]) == choice.message.content


def test_readings_equal_the_library_projections_of_the_same_text(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    response = chat(client, monitor=["evil", {"vector": "humor", "layer": 20}])
    persona = response.choices[0].model_extra["persona"]
    prompt = encode_prompt(smollm2.tokenizer, QUESTION)
    answer = token_ids(response.choices[0])
    assert len(answer) == TOKENS  # ends on max_tokens: its last token has a reading too
    for name, layer in (("evil", LAYER), ("humor", 20)):
        truth = library_projections(smollm2, prompt + answer, vectors[name], layer)
        assert persona["prompt_last"][name] == pytest.approx(truth[len(prompt) - 1], abs=1e-3)
        served = [t["values"][name] for t in persona["tokens"]]
        assert served == pytest.approx(truth[len(prompt) :], abs=1e-3)


def test_stream_carries_each_tokens_readings(client: openai.OpenAI) -> None:
    whole = chat(client, monitor=["evil"])
    chunks = list(chat(client, monitor=["evil"], stream=True))
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant"
    persona = whole.choices[0].model_extra["persona"]
    assert first.model_extra["persona"]["prompt_last"] == persona["prompt_last"]
    token_chunks = [c.choices[0] for c in chunks[1:-1]]
    streamed = [c.model_extra["persona"]["tokens"][0] for c in token_chunks]
    assert streamed == persona["tokens"]
    assert "".join(c.delta.content or "" for c in token_chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"


def test_guard_below_every_value_equals_subtracting_at_response_positions(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    """A guard that fires everywhere is exactly ``add −coef·v`` at ``response`` positions."""
    back = SteeringSetting.from_vector(vectors["evil"], None, -6.0, "raw", "response")
    expected = library_answer(smollm2, QUESTION, [back])
    response = chat(client, guard=[{"vector": "evil", "threshold": -1e9, "coef": 6.0}])
    persona = response.choices[0].model_extra["persona"]
    assert token_ids(response.choices[0]) == expected
    assert persona["guarded"] == list(range(len(expected)))
    calm = chat(client, guard=[{"vector": "evil", "threshold": 1e9, "coef": 6.0}])
    assert token_ids(calm.choices[0]) == library_answer(smollm2, QUESTION, [])
    assert calm.choices[0].model_extra["persona"]["guarded"] == []


def test_completions_stop_strings_logprobs_and_seeded_sampling(
    client: openai.OpenAI, smollm2: LoadedModel
) -> None:
    free = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=12, temperature=0
    )
    text = free.choices[0].text
    stop = text.strip().split(" ")[1]  # a word that occurs in the free answer
    stopped = client.completions.create(
        model="smollm2",
        prompt="The capital of France is",
        max_tokens=12,
        temperature=0,
        stop=[stop],
        logprobs=3,
    )
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    logprobs = stopped.choices[0].logprobs
    for chosen, alternatives in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert len(alternatives) == 3
        assert chosen == pytest.approx(max(alternatives.values()), abs=1e-5)  # greedy
        assert chosen <= 0
    sampled = [
        client.completions.create(
            model="smollm2",
            prompt=["Once upon a time", "My favourite food"],
            max_tokens=8,
            temperature=1.0,
            seed=7,
            n=2,
        )
        for _ in range(2)
    ]
    texts = [[c.text for c in r.choices] for r in sampled]
    assert texts[0] == texts[1]  # same seed, same samples
    assert len(texts[0]) == 4 and texts[0][0] != texts[0][1]  # n choices differ


def test_concurrent_mixed_requests_equal_the_same_requests_one_by_one(
    client: openai.OpenAI, server: tuple[str, Any]
) -> None:
    requests: list[dict[str, Any]] = [
        {},
        {"steering": [{"vector": "humor", "coef": 3.0}]},
        {
            "steering": [{"vector": "evil", "coef": -4.0, "positions": "response"}],
            "monitor": ["humor"],
        },
        {"monitor": ["evil", "humor"]},
        {"steering": [{"vector": "evil", "op": "ablate"}], "monitor": ["evil"]},
        {"guard": [{"vector": "evil", "threshold": 0.0, "coef": 6.0}]},
    ]
    alone = [chat(client, **dict(r)) for r in requests]
    together: list[Any] = [None] * len(requests)
    stats = server[1].state.server.scheduler.stats
    stats.largest_batch = 0

    def send(index: int) -> None:
        together[index] = chat(client, **dict(requests[index]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.largest_batch >= 3  # they were decoded together
    for one, many in zip(alone, together, strict=True):
        assert many.choices[0].message.content == one.choices[0].message.content
        served, reference = (c.choices[0].model_extra.get("persona") for c in (many, one))
        assert _close(served, reference)


def _close(a: Any, b: Any, tol: float = 1e-3) -> bool:
    """Nested dicts/lists equal, floats within ``tol`` (batching changes padding, not values)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, abs_tol=tol)
    return bool(a == b)


def test_a_disconnected_stream_frees_its_row(server: tuple[str, Any]) -> None:
    url, app = server
    stats = app.state.server.scheduler.stats
    steps_before = stats.steps
    body = {
        "model": "smollm2",
        "messages": QUESTION,
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        received = [line for _, line in zip(range(6), lines, strict=False) if line]
    assert received and all(line.startswith("data: ") for line in received)
    deadline = time.monotonic() + 120
    while stats.active and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stats.active == 0
    assert stats.steps - steps_before < 100  # stopped long before max_tokens
    assert chat(openai.OpenAI(base_url=url + "/v1", api_key="x")).choices[0].message.content


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"steering": [{"vector": "nope"}]}, 400, "unknown vector 'nope'"),
        ({"steering": [{"vector": "evil", "layer": 31}]}, 400, "out of range"),
        ({"monitor": [{"vector": "evil", "layer": 99}]}, 400, "monitor.0"),
        ({"max_tokens": -3}, 400, "max_tokens"),
        ({"max_tokens": 100_000}, 400, "over this server's limit"),
        ({"model": "gpt-4"}, 404, "not served here"),
        ({"messages": []}, 400, "messages"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"guard": [{"vector": "evil", "threshold": "p90"}]}, 400, "percentile"),
        ({"n": 50}, 400, "batch limit"),
    ],
)
def test_bad_bodies_get_a_4xx_in_the_openai_shape(
    server: tuple[str, Any], body: dict[str, Any], status: int, needle: str
) -> None:
    request = {"model": "smollm2", "messages": QUESTION, "max_tokens": 4, **body}
    response = httpx.post(server[0] + "/v1/chat/completions", json=request, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert needle in error["message"] and "\n" not in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        (b'{"model": "smollm2", "messages": [', 400, "not valid JSON"),
        (
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], '
            b'"steering": [{"vector": "evil", "coef": NaN}]}',
            400,
            "steering.0.coef",
        ),
        (b'{"model": "smollm2", "prompt": "' + b"x" * 30_000 + b'"}', 413, "over 20000 bytes"),
        (b"[1, 2]", 400, "JSON object"),
    ],
)
def test_malformed_bodies_get_a_4xx_and_the_server_keeps_serving(
    server: tuple[str, Any], client: openai.OpenAI, content: bytes, status: int, needle: str
) -> None:
    headers = {"content-type": "application/json"}
    response = httpx.post(server[0] + "/v1/chat/completions", content=content, headers=headers)
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]
    assert httpx.get(server[0] + "/health").json()["status"] == "ok"


def test_api_key_is_required_when_set(
    smollm2: LoadedModel, vectors_dir: Path, vectors: Any
) -> None:
    with running_server(smollm2, vectors_dir, api_key="s3cret") as (url, _):
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = httpx.get(url + "/v1/models", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert chat(good).choices[0].message.content
        assert httpx.get(url + "/health").status_code == 200  # no key needed


def test_a_request_over_its_time_gets_504(
    smollm2: LoadedModel, vectors_dir: Path, vectors: Any
) -> None:
    with running_server(smollm2, vectors_dir, request_timeout_s=0.3) as (url, app):
        body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 300, "temperature": 0}
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "timeout"
        stats = app.state.server.scheduler.stats
        deadline = time.monotonic() + 60
        while stats.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats.active == 0 and stats.steps < 300  # the timed-out row was stopped


def test_serve_refuses_a_public_address_without_a_key() -> None:
    from typer.testing import CliRunner

    from personavec.cli.app import app

    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--api-key" in result.output and len(result.output.strip().splitlines()) == 1


def test_stream_json_lines_are_server_sent_events(server: tuple[str, Any]) -> None:
    body = {
        "model": "smollm2",
        "prompt": "Hello",
        "max_tokens": 3,
        "temperature": 0,
        "stream": True,
        "monitor": ["evil"],
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", server[0] + "/v1/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert payloads[-1]["usage"]["completion_tokens"] == 3
    tokens = [p["choices"][0]["persona"]["tokens"] for p in payloads[1:-2]]
    assert [len(t) for t in tokens] == [1, 1, 1]


def test_requests_joining_a_running_batch_get_the_tokens_they_get_alone(
    client: openai.OpenAI, server: tuple[str, Any]
) -> None:
    """B (short prompt) and C (a prompt longer than A's whole cache) join while A decodes: the
    running cache is left-padded for C, and every answer equals its answer alone."""
    long_question = "Please explain, step by step and with care, " * 12 + "how bread is made."
    asks: dict[str, dict[str, Any]] = {
        "A": {"messages": QUESTION, "max_tokens": 30, "monitor": ["evil"]},
        "B": {
            "messages": [{"role": "user", "content": "Hi!"}],
            "max_tokens": 8,
            "steering": [{"vector": "humor", "coef": 3.0}],
        },
        "C": {
            "messages": [{"role": "user", "content": long_question}],
            "max_tokens": 8,
            "monitor": ["humor"],
            "temperature": 0.7,
            "seed": 5,
        },
    }

    def ask(name: str, **extra: Any) -> Any:
        spec = dict(asks[name])
        return client.chat.completions.create(
            model="smollm2",
            messages=spec.pop("messages"),
            max_tokens=spec.pop("max_tokens"),
            temperature=spec.pop("temperature", 0),
            seed=spec.pop("seed", None),
            extra_body=spec,
            **extra,
        )

    alone = {name: ask(name) for name in asks}
    joined: dict[str, Any] = {}
    stats = server[1].state.server.scheduler.stats
    stats.largest_batch = 0
    stream = ask("A", stream=True)
    chunks = [next(stream) for _ in range(6)]  # A is decoding
    threads = [threading.Thread(target=lambda n=n: joined.__setitem__(n, ask(n))) for n in "BC"]
    for thread in threads:
        thread.start()
    chunks += list(stream)
    for thread in threads:
        thread.join()
    assert stats.largest_batch >= 2  # B and C joined while A was decoding
    streamed = [
        t
        for c in chunks[1:]
        for t in (c.choices[0].model_extra or {}).get("persona", {}).get("tokens", [])
    ]
    assert _close(streamed, alone["A"].choices[0].model_extra["persona"]["tokens"])
    for name in "BC":
        assert joined[name].choices[0].message.content == alone[name].choices[0].message.content
        assert _close(
            joined[name].choices[0].model_extra.get("persona"),
            alone[name].choices[0].model_extra.get("persona"),
        )


def test_chat_logprobs_follow_the_openai_shape(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=TOKENS,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == TOKENS
    assert "".join(entry.token for entry in content) == response.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the top
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob

"""``personavec serve --engine vllm`` end to end: the official ``openai`` client against a real
server on 127.0.0.1 whose scheduler drives vLLM. Plain and steered answers equal the HF
engine's; served readings equal the library's and stream per token; a guard acts as the same
subtraction; concurrent mixed requests decode together and equal the same requests one by
one; logprobs get a one-line 400."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from personavec.core.models import LoadedModel, encode_prompt
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector
from personavec.engines.generation import GenerationRequest, SamplingConfig
from personavec.monitor.specs import MonitorSpec
from serve_helpers import LAYER, running_server, smollm2_vectors
from vllm_helpers import hf_tokens, needs_vllm

pytestmark = [needs_vllm, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "Give me one tip for a rainy day."}]
TOKENS = 10
CONFIG = SamplingConfig(max_new_tokens=TOKENS, temperature=0.0)


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
    with running_server(smollm2, vectors_dir, engine="vllm") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: tuple[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


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


def test_plain_answers_equal_the_hf_engine(client: openai.OpenAI, smollm2: LoadedModel) -> None:
    want = hf_tokens(smollm2, [GenerationRequest(QUESTION)], config=CONFIG)[0]
    plain = chat(client)
    assert plain.choices[0].message.content == smollm2.tokenizer.decode(
        want, skip_special_tokens=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, stream=True))
    assert streamed == plain.choices[0].message.content


def test_steered_answers_equal_the_hf_engine(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    request = GenerationRequest(QUESTION)
    want = hf_tokens(smollm2, [request], config=CONFIG)[0]
    setting = SteeringSetting.from_vector(vectors["humor"], None, 3.0)
    steered_want = hf_tokens(smollm2, [request], [setting], CONFIG)[0]
    assert steered_want != want
    steered = chat(client, steering=[{"vector": "humor", "coef": 3.0}], monitor=["evil"])
    assert token_ids(steered.choices[0]) == steered_want


def test_served_readings_equal_the_library_and_stream_per_token(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    from personavec.engines.vllm_engine import RequestControls, VLLMEngine

    setting = SteeringSetting.from_vector(vectors["humor"], None, 3.0)
    specs = (MonitorSpec("evil", LAYER, vectors["evil"].at(LAYER)),)
    controls = RequestControls(tuple(setting.interventions()), specs)
    [library] = VLLMEngine(smollm2).run([GenerationRequest(QUESTION)], CONFIG, [controls])
    extra = {"steering": [{"vector": "humor", "coef": 3.0}], "monitor": ["evil"]}
    whole = chat(client, **extra)
    persona = whole.choices[0].model_extra["persona"]
    prompt_len = len(encode_prompt(smollm2.tokenizer, QUESTION))
    values = {r.position: r.values["evil"] for r in library.readings}
    assert persona["prompt_last"]["evil"] == pytest.approx(values[prompt_len - 1], abs=1e-4)
    served = [t["values"]["evil"] for t in persona["tokens"]]
    assert len(served) == TOKENS  # the last answer token is read too (one extra step)
    fed = [values[prompt_len + i] for i in range(TOKENS - 1)]
    assert served[:-1] == pytest.approx(fed, abs=1e-4)
    assert token_ids(whole.choices[0]) == library.generation.response_token_ids

    chunks = list(chat(client, stream=True, **extra))
    assert chunks[0].choices[0].model_extra["persona"]["prompt_last"] == persona["prompt_last"]
    streamed = [c.choices[0].model_extra["persona"]["tokens"][0] for c in chunks[1:-1]]
    assert streamed == persona["tokens"]


def test_guard_everywhere_equals_subtracting_at_response_positions(
    client: openai.OpenAI, smollm2: LoadedModel, vectors: dict[str, PersonaVector]
) -> None:
    back = SteeringSetting.from_vector(vectors["evil"], None, -6.0, "raw", "response")
    want = hf_tokens(smollm2, [GenerationRequest(QUESTION)], [back], CONFIG)[0]
    response = chat(client, guard=[{"vector": "evil", "threshold": -1e9, "coef": 6.0}])
    assert token_ids(response.choices[0]) == want
    assert response.choices[0].model_extra["persona"]["guarded"] == list(range(len(want)))


def test_concurrent_mixed_requests_equal_the_same_requests_one_by_one(
    client: openai.OpenAI, server: tuple[str, Any]
) -> None:
    requests: list[dict[str, Any]] = [
        {},
        {"steering": [{"vector": "humor", "coef": 3.0}]},
        {"steering": [{"vector": "evil", "coef": -4.0, "positions": "response"}]},
        {"monitor": ["evil", "humor"]},
        {"steering": [{"vector": "evil", "op": "ablate"}], "monitor": ["evil"]},
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
    assert stats.largest_batch >= 3  # decoded together
    for one, many in zip(alone, together, strict=True):
        assert many.choices[0].message.content == one.choices[0].message.content
        a, b = (c.choices[0].model_extra.get("persona") for c in (many, one))
        if a is not None:
            assert [t["id"] for t in a["tokens"]] == [t["id"] for t in b["tokens"]]
            for x, y in zip(a["tokens"], b["tokens"], strict=True):
                assert x["values"] == pytest.approx(y["values"], abs=1e-3)


def test_logprobs_are_refused_in_one_line(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="logprobs are not served with --engine vllm"):
        client.chat.completions.create(
            model="smollm2",
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=3,
            logprobs=True,
        )

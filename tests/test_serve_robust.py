"""The server under requests that go wrong, with tiny random models (fast): a row whose
activations become non-finite fails alone, sliding-window models are served one sequence at a
time, chat-template errors and malformed extensions are 4xx, decoding reuses its hooks and
detokenizes incrementally."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from torch.utils.hooks import RemovableHandle

from personavec.core.models import LoadedModel
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from serve_helpers import running_server, sliding_window_model, tiny_vectors
from tiny_models import tiny_model

QUESTION = [{"role": "user", "content": "Give me one tip for a rainy day."}]


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vectors_dir(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-vectors")
    tiny_vectors(tiny, folder)
    return folder


@pytest.fixture(scope="module")
def server(tiny: LoadedModel, vectors_dir: Path) -> Iterator[tuple[str, Any]]:
    with running_server(tiny, vectors_dir, batch_wait_ms=1000) as running:
        yield running


def client_of(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def ask(url: str, model: str, messages: Any = QUESTION, **extra: Any) -> Any:
    """A greedy chat completion (an ``openai`` error object when it fails)."""
    stream = extra.pop("stream", False)
    max_tokens = extra.pop("max_tokens", 12)
    temperature = extra.pop("temperature", 0)
    seed = extra.pop("seed", None)
    try:
        return client_of(url).chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            stream=stream,
            extra_body=extra or None,
        )
    except openai.APIStatusError as exc:
        return exc


def concurrently(calls: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda n=n, c=c: results.__setitem__(n, c()))
        for n, c in calls.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def library_answer(loaded: LoadedModel, messages: Any, tokens: int) -> str:
    """The library's own greedy answer (``generate`` on one prompt, no server)."""
    config = SamplingConfig(max_new_tokens=tokens, temperature=0)
    [generation] = HFEngine(loaded).generate([GenerationRequest(messages)], config)
    return str(loaded.tokenizer.decode(generation.response_token_ids, skip_special_tokens=True))


# ---- a non-finite row fails alone ---------------------------------------------------------
def test_rows_that_go_non_finite_fail_alone_and_the_others_equal_their_solo_answers(
    server: tuple[str, Any], tiny: LoadedModel
) -> None:
    """Five requests are admitted together: two good ones, one whose steering overflows the
    residual at once (prefill), one whose guards fire only at a generated token (a decoding
    step) with a change that overflows to infinity there, and one whose guard overflows float32
    when its hooks are built. Each bad one gets a 400 naming its setting; the good ones get the
    answer they get alone."""
    url, app = server
    model = tiny.model_id
    reading = ask(url, model, monitor=["up"]).choices[0].model_extra["persona"]
    last = reading["prompt_last"]["up"]
    values = [t["values"]["up"] for t in reading["tokens"]]
    # a threshold the last prompt token stays under and a generated token crosses
    name, sign = ("up", 1.0) if max(values) > last else ("down", -1.0)
    threshold = sign * (last + (max(values) if sign > 0 else min(values))) / 2
    good: dict[str, dict[str, Any]] = {
        "plain": {},
        "steered": {"steering": [{"vector": "nudge", "coef": 3.0}], "monitor": ["nudge"]},
    }
    bad: dict[str, dict[str, Any]] = {
        "overflow": {"steering": [{"vector": "up", "coef": 3e38, "layer": 1}]},
        # two rules on one vector fire together: -6e38 overflows to -inf
        "guard": {"guard": [{"vector": name, "threshold": threshold, "coef": 3e38}] * 2},
        # coef · v overflows float32 itself: found when the row's hooks are built
        "dtype": {"guard": [{"vector": "up", "threshold": 0.0, "coef": 5e38}]},
    }
    alone = {key: ask(url, model, **body) for key, body in good.items()}
    stats = app.state.server.scheduler.stats
    stats.largest_batch = 0
    calls = {key: (lambda b=body: ask(url, model, **b)) for key, body in {**good, **bad}.items()}
    together = concurrently(calls)
    assert stats.largest_batch == 5  # all five were admitted together
    for key in good:
        assert together[key].choices[0].message.content == alone[key].choices[0].message.content
    served, solo = (r["steered"].choices[0].model_extra["persona"] for r in (together, alone))
    assert [t["id"] for t in served["tokens"]] == [t["id"] for t in solo["tokens"]]
    values = [t["values"]["nudge"] for t in served["tokens"]]
    assert values == pytest.approx([t["values"]["nudge"] for t in solo["tokens"]], abs=1e-4)
    overflow, guard = together["overflow"], together["guard"]
    assert isinstance(overflow, openai.BadRequestError)
    assert "steering [up]" in overflow.message and "NaN or inf" in overflow.message
    assert isinstance(guard, openai.BadRequestError)
    assert f"guard [{name}" in guard.message
    dtype = together["dtype"]
    assert isinstance(dtype, openai.BadRequestError)
    assert "guard [up coef 5e+38]" in dtype.message and "overflows" in dtype.message
    assert httpx.get(url + "/health").json()["active"] == 0


# ---- sliding-window models --------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gemma3_text", "mistral"])
def test_a_sliding_window_model_serves_concurrent_requests_one_at_a_time(
    arch: str, tmp_path: Path
) -> None:
    """Continuous batching cannot merge sliding-window caches: the server says so at start-up
    and decodes one sequence at a time; a request sent while another decodes gets the answer
    the library gives it alone (both longer than the window)."""
    loaded = sliding_window_model(arch, window=4)
    long_question = [{"role": "user", "content": "Tell me, in a few words, how rain forms."}]
    expected = {
        "A": library_answer(loaded, QUESTION, 16),
        "B": library_answer(loaded, long_question, 10),
    }
    with running_server(loaded, None) as (url, app):
        model = loaded.model_id
        stream = ask(url, model, max_tokens=16, stream=True)
        chunks = [next(stream)]  # A has started decoding
        joined = concurrently({"B": lambda: ask(url, model, long_question, max_tokens=10)})
        chunks += list(stream)
        health = httpx.get(url + "/health").json()
        notice = getattr(app.state.server.scheduler, "notice", None)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected["A"]
    assert isinstance(joined["B"], openai.types.chat.ChatCompletion)
    assert joined["B"].choices[0].message.content == expected["B"]
    assert notice is not None and "one sequence at a time" in notice
    assert health.get("batching") == "one sequence at a time"


def test_a_model_with_a_plain_cache_batches_continuously(server: tuple[str, Any]) -> None:
    assert server[1].state.server.scheduler.notice is None
    assert httpx.get(server[0] + "/health").json()["batching"] == "continuous"


# ---- chat templates -----------------------------------------------------------------------
def test_a_chat_template_error_is_a_400_with_its_message_and_templating_is_off_the_loop(
    tmp_path: Path,
) -> None:
    loaded = tiny_model("llama", seed=1)
    tokenizer = loaded.tokenizer
    refuse = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System messages are not supported by this model') }}{% endif %}"
    )
    tokenizer.chat_template = refuse + str(tokenizer.chat_template)
    threads: list[str] = []
    render = tokenizer.apply_chat_template

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return render(*args, **kwargs)

    tokenizer.apply_chat_template = recording  # type: ignore[method-assign]
    with running_server(loaded, None) as (url, _):
        threads.clear()  # start-up renders a probe prompt in this thread
        system = [{"role": "system", "content": "Be brief."}, *QUESTION]
        refused = ask(url, loaded.model_id, system, max_tokens=3)
        assert isinstance(refused, openai.BadRequestError)
        assert "System messages are not supported by this model" in refused.message
        assert ask(url, loaded.model_id, max_tokens=3).choices[0].message.content is not None
    assert threads and all(name.startswith("personavec-template") for name in threads)


# ---- hooks and detokenization per step ----------------------------------------------------
def test_decoding_steps_reuse_the_hooks_of_their_batch(
    server: tuple[str, Any], tiny: LoadedModel
) -> None:
    """A steered, monitored and guarded answer of 60 tokens registers its hooks a fixed number
    of times (prefill, then the running batch), not at every step, and removes them before the
    answer is reported."""
    url, _ = server
    before = RemovableHandle.next_id
    response = ask(
        url,
        tiny.model_id,
        max_tokens=60,
        steering=[{"vector": "nudge", "coef": 1.0}],
        monitor=["nudge"],
        guard=[{"vector": "up", "threshold": 1e6, "coef": 1.0}],
    )
    registered = RemovableHandle.next_id - before
    assert response.usage.completion_tokens == 60
    assert registered < 30
    # the answer is reported once the emptied batch has removed them: the model is as it was
    hooked = [m for m in tiny.model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert not hooked


def test_answers_are_detokenized_incrementally_and_stream_the_same_text(
    tiny: LoadedModel, vectors_dir: Path
) -> None:
    """Sampled tokens of a random model: many are pieces of multi-byte characters. Streamed and
    whole answers equal the tokenizer's decoding of all their ids at once, and the server
    decodes each token a bounded number of times, not the whole answer at every step."""
    tokenizer = tiny.tokenizer
    decode = tokenizer.decode
    decoded: list[int] = []

    def counting(ids: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(len(ids))
        return decode(ids, *args, **kwargs)

    tokenizer.decode = counting  # type: ignore[method-assign,assignment]
    try:
        with running_server(tiny, vectors_dir) as (url, _):
            sampled = {"temperature": 1.0, "seed": 11, "max_tokens": 120, "monitor": ["nudge"]}
            decoded.clear()
            whole = ask(url, tiny.model_id, **sampled)
            per_answer = sum(decoded)
            stream = ask(url, tiny.model_id, stream=True, **sampled)
            pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    finally:
        del tokenizer.decode
    ids = [t["id"] for t in whole.choices[0].model_extra["persona"]["tokens"]]
    text = whole.choices[0].message.content
    assert len(ids) == 120 and any(ord(c) > 127 for c in text)
    assert text == decode(ids, skip_special_tokens=True)
    assert "".join(pieces) == text
    assert per_answer <= 8 * len(ids)  # the whole answer at every step would be ~7 000


# ---- malformed requests -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("steering", "field"),
    [
        ({"vector": "nudge", "coef": 1.0, "threshold": 2.0}, "threshold"),
        ({"vector": "nudge", "op": "ablate", "coef": 4.0}, "coef"),
        ({"vector": "nudge", "op": "cap", "threshold": 1.0, "coef": 4.0}, "coef"),
        ({"vector": "nudge", "op": "ablate", "bound": "min"}, "bound"),
    ],
)
def test_a_field_the_operator_does_not_use_is_refused(
    server: tuple[str, Any], tiny: LoadedModel, steering: dict[str, Any], field: str
) -> None:
    response = ask(server[0], tiny.model_id, max_tokens=2, steering=[steering])
    assert isinstance(response, openai.BadRequestError)
    assert f"{field} does not apply to op" in response.message
    assert "steering.0" in response.message


def test_a_deeply_nested_body_is_a_400(server: tuple[str, Any], tiny: LoadedModel) -> None:
    depth = 100_000
    body = (
        b'{"model": "' + tiny.model_id.encode() + b'", "messages": ' + b"[" * depth + b"]" * depth
    )
    response = httpx.post(
        server[0] + "/v1/chat/completions",
        content=body + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]["message"]


def test_an_absurd_strength_on_a_vector_without_typical_norms_is_a_400(
    tiny: LoadedModel, tmp_path: Path
) -> None:
    from fixtures import synthetic_vector
    from personavec.core.vector import config_fingerprint

    synthetic_vector(
        n_layers=3,
        hidden=64,
        seed=3,
        trait="bare",
        model_id=tiny.model_id,
        fingerprint=config_fingerprint(tiny.model.config),
        layer=2,
    ).save(tmp_path / "bare.safetensors")
    with running_server(tiny, tmp_path) as (url, _):
        response = ask(url, tiny.model_id, steering=[{"vector": "bare", "coef": 1e30}])
    assert isinstance(response, openai.BadRequestError)
    assert "steering" in response.message

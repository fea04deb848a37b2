"""A small chat client for OpenAI-compatible servers (and, optionally, Anthropic's Messages API).

One :class:`LLMClient` talks to one model on one endpoint. It offers a synchronous
:meth:`LLMClient.chat`, an asynchronous :meth:`LLMClient.achat`, and batch helpers that run
requests concurrently with at most ``concurrency`` in flight. Transient failures (HTTP 429,
HTTP 5xx, an HTTP 200 whose body is not a usable completion, timeouts, refused or dropped
connections) are retried with exponential backoff and full jitter, honouring ``Retry-After``;
everything else fails at once with a one-line :class:`~personavec.errors.PersonavecError`. One
retry loop (:meth:`LLMClient._outcome` decides, :meth:`LLMClient._backoff_s` waits or gives up)
serves both the blocking and the asynchronous calls. A batch whose requests partly fail raises
:class:`BatchIncomplete`, which carries the answers that did arrive.

Endpoints and keys come from arguments or the environment:

* ``openai:MODEL`` (or a bare model name): ``OPENAI_BASE_URL`` (default
  ``https://api.openai.com/v1``) and ``OPENAI_API_KEY``. A key is required only for the default
  api.openai.com endpoint; local servers (llama.cpp, vLLM, ...) usually need none.
* ``anthropic:MODEL``: ``ANTHROPIC_BASE_URL`` (default ``https://api.anthropic.com/v1``) and
  ``ANTHROPIC_API_KEY``. Text only: the Messages API returns no log-probabilities.

The per-request timeout defaults to ``PERSONAVEC_JUDGE_TIMEOUT`` seconds when set, else 120 s.
Request bodies and answer parsing live in :mod:`personavec.llm_wire`, retries and timeouts in
:mod:`personavec.llm_retry`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlparse

import httpx

from personavec.errors import PersonavecError
from personavec.llm_retry import (
    RETRY_STATUS,
    TIMEOUT_ENV,
    RetryPolicy,
    Transient,
    resolve_timeout_s,
)
from personavec.llm_wire import (
    ChatOptions,
    ChatResult,
    Message,
    Provider,
    anthropic_body,
    check_options,
    openai_body,
    parse_anthropic_response,
    parse_openai_response,
    parse_retry_after,
)

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1"
ANTHROPIC_VERSION = "2023-06-01"

T = TypeVar("T")


class BatchIncomplete(PersonavecError):
    """Some requests of a batch failed for good; ``results`` holds the answers that arrived.

    ``results[i]`` is the :class:`ChatResult` of conversation ``i``, or ``None`` where that
    request failed. The message is the first failure's, with how many requests were answered.
    """

    def __init__(self, message: str, results: list[ChatResult | None]) -> None:
        super().__init__(message)
        self.results = results


@dataclass
class LLMClient:
    """Chat with one model on one endpoint; see the module docstring.

    Args:
        model: The model name the server knows (``gpt-4.1-mini``, ``claude-...``, anything for
            a llama.cpp server).
        provider: ``"openai"`` (any OpenAI-compatible server) or ``"anthropic"``.
        base_url: Endpoint root ending in ``/v1``; default from the environment (module docs).
        api_key: Bearer key; default from the environment.
        timeout_s: Per-request timeout in seconds; default ``$PERSONAVEC_JUDGE_TIMEOUT`` or 120.
        concurrency: Most requests in flight at once in the batch helpers.
        retry: Retry policy for transient failures.
    """

    model: str
    provider: Provider = "openai"
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float | None = None
    concurrency: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    _rng: random.Random = field(
        default_factory=random.Random, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.provider not in ("openai", "anthropic"):
            raise PersonavecError(
                f"unknown LLM provider {self.provider!r}; use 'openai' or 'anthropic'"
            )
        self.timeout_s = resolve_timeout_s(self.timeout_s)
        if self.concurrency < 1:
            raise PersonavecError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.retry.max_attempts < 1:
            raise PersonavecError(f"max_attempts must be >= 1, got {self.retry.max_attempts}")
        if self.provider == "openai":
            env_url, default_url, env_key = (
                "OPENAI_BASE_URL",
                DEFAULT_OPENAI_BASE_URL,
                "OPENAI_API_KEY",
            )
        else:
            env_url, default_url = "ANTHROPIC_BASE_URL", DEFAULT_ANTHROPIC_BASE_URL
            env_key = "ANTHROPIC_API_KEY"
        self.base_url = (self.base_url or os.environ.get(env_url) or default_url).rstrip("/")
        if not self.api_key:
            self.api_key = os.environ.get(env_key) or None
        default_host = urlparse(default_url).hostname
        if self.api_key is None and urlparse(self.base_url).hostname == default_host:
            raise PersonavecError(
                f"no API key for {self.base_url}; set {env_key} or pass --api-key"
            )

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> LLMClient:
        """Build a client from ``openai:MODEL``, ``anthropic:MODEL`` or a bare model name."""
        provider, sep, model = spec.partition(":")
        if not sep:
            provider, model = "openai", spec
        if provider not in ("openai", "anthropic") or not model:
            raise PersonavecError(f"unknown LLM spec {spec!r}; use openai:MODEL or anthropic:MODEL")
        return cls(model, cast(Provider, provider), base_url, api_key, **kwargs)

    # -- requests ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The full request URL."""
        path = "/chat/completions" if self.provider == "openai" else "/messages"
        return f"{self.base_url}{path}"

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.provider == "anthropic":
            headers["anthropic-version"] = ANTHROPIC_VERSION
            if self.api_key:
                headers["x-api-key"] = self.api_key
        elif self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    def _body(self, messages: Sequence[Message], options: ChatOptions) -> dict[str, Any]:
        if self.provider == "anthropic":
            return anthropic_body(self.model, messages, options)
        return openai_body(self.model, messages, options)

    def _parse(self, payload: Any) -> ChatResult:
        if self.provider == "anthropic":
            return parse_anthropic_response(payload)
        return parse_openai_response(payload)

    @property
    def _api_name(self) -> str:
        return "Anthropic Messages" if self.provider == "anthropic" else "OpenAI chat"

    def _classify(self, response: httpx.Response) -> Transient | None:
        """``None`` for success; a transient failure to retry; raise for a permanent one."""
        if response.status_code < 300:
            return None
        if response.status_code in RETRY_STATUS:
            return Transient(f"HTTP {response.status_code}", parse_retry_after(response.headers))
        snippet = " ".join(response.text.split())[:200]
        if response.status_code in (401, 403):
            key_env = "OPENAI_API_KEY" if self.provider == "openai" else "ANTHROPIC_API_KEY"
            raise PersonavecError(
                f"{self.url} refused the request (HTTP {response.status_code}: {snippet}); "
                f"check {key_env} or --api-key"
            )
        raise PersonavecError(
            f"{self.url} rejected the request for model {self.model!r} "
            f"(HTTP {response.status_code}: {snippet}); check the model name and options"
        )

    def _outcome(self, reply: httpx.Response | httpx.TransportError) -> ChatResult | Transient:
        """The answer of one attempt, or the transient failure to retry; raise when permanent.

        An HTTP 200 whose body is not JSON, or JSON without a usable completion (e.g. empty
        ``choices``), is transient: proxies and overloaded servers send those now and then.
        """
        if isinstance(reply, httpx.TransportError):
            return self._transport_failure(reply)
        failure = self._classify(reply)
        if failure is not None:
            return failure
        try:
            payload = reply.json()
        except ValueError:
            snippet = " ".join(reply.text.split())[:120]
            return Transient(f"a body that is not JSON: {snippet!r}", kind="malformed")
        try:
            return self._parse(payload)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            return Transient(
                f"no usable completion ({type(exc).__name__}: {exc})", kind="malformed"
            )

    def _backoff_s(self, attempt: int, last: Transient) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based); raise after the last."""
        if attempt >= self.retry.max_attempts:
            raise self._give_up(last)
        return self.retry.delay_s(attempt, last.retry_after_s, self._rng)

    def _give_up(self, last: Transient) -> PersonavecError:
        attempts = self.retry.max_attempts
        if last.kind == "unreachable":
            return PersonavecError(
                f"cannot reach {self.url} after {attempts} attempts ({last.reason}); "
                "check that the server is running and the base URL (--base-url / "
                f"{'OPENAI' if self.provider == 'openai' else 'ANTHROPIC'}_BASE_URL)"
            )
        if last.kind == "timeout":
            return PersonavecError(
                f"{self.url} did not answer within {self.timeout_s:g} s ({attempts} attempts); "
                f"raise --judge-timeout (or {TIMEOUT_ENV}) or use a faster server"
            )
        if last.kind == "malformed":
            return PersonavecError(
                f"{self.url} answered HTTP 200 without a usable completion {attempts} times "
                f"(last: {last.reason}); check that the server speaks the {self._api_name} API"
            )
        return PersonavecError(
            f"{self.url} kept failing after {attempts} attempts (last: {last.reason}); "
            f"try again later or lower --judge-concurrency (now {self.concurrency})"
        )

    @staticmethod
    def _transport_failure(exc: httpx.TransportError) -> Transient:
        reason = type(exc).__name__
        detail = str(exc).strip()
        if detail:
            reason = f"{reason}: {detail[:120]}"
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return Transient(reason, kind="timeout")
        return Transient(reason, kind="unreachable")

    def chat(self, messages: Sequence[Message], options: ChatOptions | None = None) -> ChatResult:
        """One chat completion, blocking, with retries."""
        options = options or ChatOptions()
        check_options(self.provider, options)
        body = self._body(messages, options)
        attempt = 0
        with httpx.Client(timeout=self.timeout_s) as http:
            while True:
                attempt += 1
                reply: httpx.Response | httpx.TransportError
                try:
                    reply = http.post(self.url, json=body, headers=self._headers())
                except httpx.TransportError as exc:
                    reply = exc
                outcome = self._outcome(reply)
                if isinstance(outcome, ChatResult):
                    return outcome
                time.sleep(self._backoff_s(attempt, outcome))

    async def achat(
        self,
        messages: Sequence[Message],
        options: ChatOptions | None = None,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> ChatResult:
        """One chat completion, asynchronous, with retries (reuses ``http`` when given)."""
        if http is None:
            async with httpx.AsyncClient(timeout=self.timeout_s) as own:
                return await self.achat(messages, options, http=own)
        options = options or ChatOptions()
        check_options(self.provider, options)
        body = self._body(messages, options)
        attempt = 0
        while True:
            attempt += 1
            reply: httpx.Response | httpx.TransportError
            try:
                reply = await http.post(self.url, json=body, headers=self._headers())
            except httpx.TransportError as exc:
                reply = exc
            outcome = self._outcome(reply)
            if isinstance(outcome, ChatResult):
                return outcome
            await asyncio.sleep(self._backoff_s(attempt, outcome))

    async def achat_many(
        self,
        conversations: Sequence[Sequence[Message]],
        options: ChatOptions | None = None,
        *,
        on_done: Callable[[int], None] | None = None,
    ) -> list[ChatResult]:
        """Many completions, at most ``concurrency`` in flight; results in input order.

        ``on_done(index)`` is called as each one finishes (e.g. to advance a progress bar).
        When some requests fail for good, the others still run to the end, and
        :class:`BatchIncomplete` is raised with every answer that arrived.
        """
        semaphore = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as http:

            async def one(index: int, messages: Sequence[Message]) -> ChatResult:
                async with semaphore:
                    result = await self.achat(messages, options, http=http)
                if on_done is not None:
                    on_done(index)
                return result

            outcomes = await asyncio.gather(
                *(one(i, m) for i, m in enumerate(conversations)), return_exceptions=True
            )
        return _complete(outcomes)

    def chat_many(
        self,
        conversations: Sequence[Sequence[Message]],
        options: ChatOptions | None = None,
        *,
        on_done: Callable[[int], None] | None = None,
    ) -> list[ChatResult]:
        """Blocking wrapper of :meth:`achat_many` (safe to call inside a running event loop)."""
        return run_sync(lambda: self.achat_many(conversations, options, on_done=on_done))


def _complete(outcomes: Sequence[ChatResult | BaseException]) -> list[ChatResult]:
    """The results of a batch; :class:`BatchIncomplete` (with the answers) when some failed."""
    for outcome in outcomes:  # anything but a request's own one-line failure propagates as is
        if isinstance(outcome, BaseException) and not isinstance(outcome, PersonavecError):
            raise outcome
    results = [o if isinstance(o, ChatResult) else None for o in outcomes]
    failures = [o for o in outcomes if isinstance(o, PersonavecError)]
    if not failures:
        return cast(list[ChatResult], results)
    answered = len(outcomes) - len(failures)
    raise BatchIncomplete(
        f"{failures[0]} ({answered} of {len(outcomes)} requests were answered)", results
    )


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running loop."""

    async def wrapper() -> T:
        return await make()

    def runner() -> T:
        coroutine: Coroutine[Any, Any, T] = wrapper()
        return asyncio.run(coroutine)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return runner()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(runner).result()

"""The request and response formats of OpenAI-compatible chat completions and Anthropic's
Messages API: request bodies, option checks, and parsing of answers and ``Retry-After``.

:mod:`personavec.llm_client` sends these over HTTP; everything here is pure.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from personavec.errors import PersonavecError

Provider = Literal["openai", "anthropic"]
Message = Mapping[str, str]


@dataclass(frozen=True)
class ChatOptions:
    """Sampling options for one chat completion."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float | None = None
    logprobs: bool = False
    """Ask for the log-probability of each generated token (OpenAI-compatible servers only)."""
    top_logprobs: int | None = None
    """How many alternatives per position to return with their log-probabilities (0-20)."""
    seed: int | None = None


@dataclass(frozen=True)
class ChatResult:
    """One completion: its text and, when asked for, per-position top log-probabilities."""

    text: str
    top_logprobs: list[dict[str, float]] | None = None
    """One mapping per generated token: candidate token text -> natural-log probability.

    Candidates that decode to the same text (e.g. two byte-level spellings) are merged by
    summing their probabilities. ``None`` when the server returned no log-probabilities."""
    finish_reason: str | None = None


def check_options(provider: Provider, options: ChatOptions) -> None:
    """Reject option combinations the provider cannot serve."""
    if options.max_tokens < 1:
        raise PersonavecError(f"max_tokens must be >= 1, got {options.max_tokens}")
    if options.top_logprobs is not None and not 0 <= options.top_logprobs <= 20:
        raise PersonavecError(f"top_logprobs must be in 0..20, got {options.top_logprobs}")
    if provider == "anthropic" and (options.logprobs or options.top_logprobs):
        raise PersonavecError(
            "Anthropic's Messages API returns no log-probabilities; use an openai: model "
            "for logprob-based judging"
        )


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); ``None`` if absent."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def openai_body(model: str, messages: Sequence[Message], options: ChatOptions) -> dict[str, Any]:
    """Request JSON for ``POST /chat/completions``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
    }
    if options.top_p is not None:
        body["top_p"] = options.top_p
    if options.seed is not None:
        body["seed"] = options.seed
    if options.logprobs or options.top_logprobs:
        body["logprobs"] = True
        if options.top_logprobs:
            body["top_logprobs"] = options.top_logprobs
    return body


def anthropic_body(model: str, messages: Sequence[Message], options: ChatOptions) -> dict[str, Any]:
    """Request JSON for Anthropic's ``POST /messages`` (system turns move to ``system``)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "messages": [
            {"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"
        ],
    }
    if system:
        body["system"] = system
    if options.top_p is not None:
        body["top_p"] = options.top_p
    return body


def _merge(pairs: Sequence[tuple[str, float]]) -> dict[str, float]:
    """token -> logprob, summing probabilities of candidates with the same text."""
    merged: dict[str, float] = {}
    for token, logprob in pairs:
        if logprob is None:
            continue
        if token in merged:
            merged[token] = math.log(math.exp(merged[token]) + math.exp(logprob))
        else:
            merged[token] = float(logprob)
    return merged


def parse_openai_response(payload: Any) -> ChatResult:
    """Text and top log-probabilities from a chat-completions response.

    Accepts the chat format (``logprobs.content[i].top_logprobs`` as a list) and the legacy
    completion format some servers send (``logprobs.top_logprobs`` as a list of mappings).
    """
    choice = payload["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content")
    if text is None:
        text = choice.get("text") or ""
    logprobs = choice.get("logprobs")
    top: list[dict[str, float]] | None = None
    if isinstance(logprobs, Mapping):
        if isinstance(logprobs.get("content"), list):
            top = [
                _merge(
                    [(c["token"], c["logprob"]) for c in position.get("top_logprobs") or []]
                    or [(position["token"], position["logprob"])]
                )
                for position in logprobs["content"]
            ]
        elif isinstance(logprobs.get("top_logprobs"), list):
            top = [_merge(list((pos or {}).items())) for pos in logprobs["top_logprobs"]]
    return ChatResult(str(text), top or None, choice.get("finish_reason"))


def parse_anthropic_response(payload: Any) -> ChatResult:
    """Text from a Messages API response (concatenated text blocks)."""
    blocks = payload["content"]
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    return ChatResult(text, None, payload.get("stop_reason"))

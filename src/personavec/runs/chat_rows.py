"""One parser for a row of chat data, with named modes for what the caller needs from it.

Every command that reads rows (``project``, ``screen``, ``finetune``, ``dataset``, ``steer``)
parses them here, so a row means the same thing everywhere. A row is a JSON object, one of:

* ``{"messages": [...]}``: chat turns, each ``{"role": "system"|"user"|"assistant",
  "content": str}``. When the last turn is an assistant turn it is the **response** and the
  turns before it are the prompt; a chat that ends with a user turn is prompt-only;
* ``{"prompt": ..., "response": ..., "system"?: ...}`` (``response`` optional);
* ``{"question": ..., "response": ..., "system"?: ...}``: a run's ``rollouts.jsonl`` row
  (``response_token_ids``, a list of token ids, wins over the response text when present);
* ``{"text": ...}``: a user prompt with no response.

A user turn needs text; an assistant or system turn may be empty. An empty response counts as
no response (whitespace is text: a model's own answer can be just that). The **mode** says what
the caller needs:

* ``"optional"`` (``project``): a response when there is one, else the prompt alone;
* ``"response"`` (``screen``, ``finetune``, ``dataset``): a response is required — a chat that
  ends with a user turn or has an empty answer is refused (``screen`` reports it as a bad row);
* ``"prompt"`` (``steer``): a prompt to answer — a row that already carries a response is
  refused.

Errors are one line, ``WHERE: what is wrong; what to do``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from personavec.core.models import Message
from personavec.errors import PersonavecError

ROLES = ("system", "user", "assistant")
Mode = Literal["optional", "response", "prompt"]
MODES: tuple[str, ...] = ("optional", "response", "prompt")
NO_RESPONSE = "no response (no assistant turn ends the chat, or its answer is empty)"
"""The reason a row without a response is refused in ``response`` mode."""
NOT_A_PROMPT = "a prompt must end with a user message; drop the answer after it"
"""The reason a row with a response is refused in ``prompt`` mode."""


class ChatRowError(PersonavecError):
    """A row of chat data is not in a supported shape, or lacks what the mode needs."""


@dataclass(frozen=True)
class ChatRow:
    """One parsed row.

    Attributes:
        prompt: The turns before the response (all turns of a prompt-only chat).
        response: The response text (``""`` when there is none).
        response_ids: Token ids of the response, when the row gives them.
        messages: Every turn of the row, in order (for per-turn readings of a chat).
    """

    prompt: list[Message]
    response: str
    response_ids: list[int] | None
    messages: list[Message]

    @property
    def has_response(self) -> bool:
        """Whether the row has a non-empty response (text or token ids)."""
        return bool(self.response) or bool(self.response_ids)


def _text(value: Any, where: str, key: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ChatRowError(f"{where}: {key!r} must be a string; fix that row")
    if not allow_empty and not value.strip():
        raise ChatRowError(f"{where}: {key!r} is empty; give it some text or drop the row")
    return value


def _turns(raw: Any, where: str) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise ChatRowError(f"{where}: 'messages' must be a non-empty list of chat turns")
    messages: list[Message] = []
    for index, turn in enumerate(raw, start=1):
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            raise ChatRowError(
                f"{where}: message {index} lacks 'role' or 'content'; give both for every turn"
            )
        role = turn["role"]
        if role not in ROLES:
            raise ChatRowError(
                f"{where}: message {index} has role {role!r}; use system, user or assistant"
            )
        content = _text(
            turn["content"], where, f"message {index} content", allow_empty=role != "user"
        )
        messages.append({"role": role, "content": content})
    return messages


def _from_messages(raw: Any, where: str, mode: Mode) -> ChatRow:
    messages = _turns(raw, where)
    if mode == "prompt" and messages[-1]["role"] != "user":
        raise ChatRowError(f"{where}: {NOT_A_PROMPT}")
    if not any(m["role"] == "user" for m in messages):
        raise ChatRowError(f"{where}: the conversation has no user turn; add one")
    if messages[-1]["role"] == "assistant":
        prompt, response = messages[:-1], messages[-1]["content"]
    else:
        prompt, response = messages, ""
    if not any(m["role"] == "user" for m in prompt):
        raise ChatRowError(f"{where}: the assistant answers before any user turn; add one")
    return ChatRow(prompt, response, None, messages)


def _token_ids(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise ChatRowError(
            f"{where}: 'response_token_ids' must be a list of integer token ids; "
            "fix it or drop the key to use the response text"
        )
    return list(value)


def _from_fields(row: Mapping[str, Any], where: str) -> ChatRow:
    user_key = next((k for k in ("prompt", "question", "text") if k in row), None)
    if user_key is None:
        raise ChatRowError(
            f"{where}: the row has none of 'messages', 'prompt', 'question' or 'text'; add one"
        )
    prompt: list[Message] = []
    if user_key != "text" and row.get("system") is not None:
        prompt.append({"role": "system", "content": _text(row["system"], where, "system")})
    prompt.append({"role": "user", "content": _text(row[user_key], where, user_key)})
    response = ""
    if user_key != "text" and row.get("response") is not None:
        response = _text(row["response"], where, "response", allow_empty=True)
    raw_ids = row.get("response_token_ids") if user_key == "question" else None
    ids = _token_ids(raw_ids, where) if raw_ids is not None else None
    answer: list[Message] = [{"role": "assistant", "content": response}] if response else []
    return ChatRow(prompt, response, ids, prompt + answer)


def parse_chat_row(row: Any, where: str, mode: Mode = "optional") -> ChatRow:
    """Parse one row (module docstring) for ``mode``; ``where`` (e.g. ``data.jsonl:3``)
    starts every error message.

    Raises:
        ChatRowError: The row is not in a supported shape, or lacks what ``mode`` needs.
    """
    if mode not in MODES:
        raise ValueError(f"unknown chat-row mode {mode!r}; use one of {', '.join(MODES)}")
    if not isinstance(row, Mapping):
        raise ChatRowError(f"{where}: each line must be a JSON object; fix that line")
    if "messages" in row:
        parsed = _from_messages(row["messages"], where, mode)
    else:
        parsed = _from_fields(row, where)
    if mode == "response" and not parsed.has_response:
        raise ChatRowError(f"{where}: {NO_RESPONSE}; add the answer or drop the row")
    if mode == "prompt" and (parsed.has_response or parsed.prompt != parsed.messages):
        raise ChatRowError(f"{where}: {NOT_A_PROMPT}")
    return parsed

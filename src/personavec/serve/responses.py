"""OpenAI response and stream-chunk bodies, built from a choice's events."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from personavec.serve.jobs import Finished, JobEvent, Started, TokenEvent
from personavec.serve.vectors import RowReadout

Kind = Literal["chat", "completion"]


@dataclass
class ChoiceState:
    """What one choice has received so far."""

    prompt_tokens: int = 0
    prompt_last: dict[str, float] | None = None
    tokens: list[TokenEvent] = field(default_factory=list)
    finished: Finished | None = None

    def add(self, event: JobEvent) -> None:
        if isinstance(event, Started):
            self.prompt_tokens, self.prompt_last = event.prompt_tokens, event.prompt_last
        elif isinstance(event, TokenEvent):
            self.tokens.append(event)
        elif isinstance(event, Finished):
            self.finished = event

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


class ResponseBuilder:
    """Bodies for one request: ids, model name, and the tokenizer for logprob token texts."""

    def __init__(
        self,
        kind: Kind,
        model: str,
        tokenizer: PreTrainedTokenizerBase,
        readout: RowReadout,
        *,
        prompts: int,
    ) -> None:
        self.kind = kind
        self.model = model
        self.tokenizer = tokenizer
        self.readout = readout
        self.prompts = prompts
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    # ---- whole responses ------------------------------------------------------------------
    def response(self, choices: list[ChoiceState]) -> dict[str, Any]:
        body = self._envelope("chat.completion" if self.kind == "chat" else "text_completion")
        body["choices"] = [self._choice(i, c) for i, c in enumerate(choices)]
        body["usage"] = self.usage(choices)
        return body

    def usage(self, choices: list[ChoiceState]) -> dict[str, int]:
        per_prompt = max(1, len(choices) // self.prompts)
        prompt = sum(c.prompt_tokens for c in choices[::per_prompt])
        completion = sum(c.finished.completion_tokens for c in choices if c.finished)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _choice(self, index: int, state: ChoiceState) -> dict[str, Any]:
        finished = state.finished
        choice: dict[str, Any] = {"index": index}
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": state.text}
        else:
            choice["text"] = state.text
        choice["logprobs"] = self._logprobs(state.tokens)
        choice["finish_reason"] = finished.finish_reason if finished else None
        persona = self._persona(state.prompt_last, state.tokens, finished, start=True)
        if persona is not None:
            choice["persona"] = persona
        return choice

    # ---- stream chunks --------------------------------------------------------------------
    def chunk(self, index: int, event: JobEvent) -> dict[str, Any] | None:
        """The chunk for one event of choice ``index`` (None: nothing to send)."""
        choice: dict[str, Any] = {"index": index}
        tokens: list[TokenEvent] = []
        prompt_last, finished = None, None
        if isinstance(event, Started):
            prompt_last = event.prompt_last
            text = ""
            if self.kind == "chat":
                choice["delta"] = {"role": "assistant", "content": ""}
        elif isinstance(event, TokenEvent):
            tokens = [event]
            text = event.text
        elif isinstance(event, Finished):
            finished = event
            text = ""
        else:
            return None
        if self.kind == "chat":
            choice.setdefault("delta", {"content": text} if text or tokens else {})
        else:
            choice["text"] = text
        choice["logprobs"] = self._logprobs(tokens) if tokens else None
        choice["finish_reason"] = finished.finish_reason if finished else None
        persona = self._persona(prompt_last, tokens, finished, start=isinstance(event, Started))
        if persona is not None:
            choice["persona"] = persona
        body = self._envelope("chat.completion.chunk" if self.kind == "chat" else "text_completion")
        body["choices"] = [choice]
        return body

    def usage_chunk(self, choices: list[ChoiceState]) -> dict[str, Any]:
        body = self._envelope("chat.completion.chunk" if self.kind == "chat" else "text_completion")
        body["choices"] = []
        body["usage"] = self.usage(choices)
        return body

    # ---- parts ----------------------------------------------------------------------------
    def _envelope(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def _persona(
        self,
        prompt_last: dict[str, float] | None,
        tokens: list[TokenEvent],
        finished: Finished | None,
        *,
        start: bool,
    ) -> dict[str, Any] | None:
        if not self.readout.specs:
            return None
        persona: dict[str, Any] = {}
        if start:
            persona["vectors"] = self.readout.describe()
            persona["prompt_last"] = prompt_last
        if tokens or not start:
            persona["tokens"] = [
                {"text": t.text, "id": t.token_id, "values": t.values} for t in tokens
            ]
        if finished is not None and finished.guarded is not None:
            persona["guarded"] = finished.guarded
        return persona

    def _logprobs(self, tokens: list[TokenEvent]) -> dict[str, Any] | None:
        if not tokens or tokens[0].logprob is None:
            return None
        decode = self.tokenizer.decode
        if self.kind == "chat":
            content = []
            for t in tokens:
                piece = str(decode([t.token_id]))
                content.append(
                    {
                        "token": piece,
                        "logprob": t.logprob,
                        "bytes": list(piece.encode()),
                        "top_logprobs": [
                            {
                                "token": (p := str(decode([i]))),
                                "logprob": lp,
                                "bytes": list(p.encode()),
                            }
                            for i, lp in t.top or []
                        ],
                    }
                )
            return {"content": content}
        offsets, offset = [], 0
        for t in tokens:
            offsets.append(offset)
            offset += len(t.text)
        return {
            "tokens": [str(decode([t.token_id])) for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{str(decode([i])): lp for i, lp in t.top or []} for t in tokens],
            "text_offset": offsets,
        }


def _alternative(piece: str, logprob: float) -> dict[str, Any]:
    return {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}

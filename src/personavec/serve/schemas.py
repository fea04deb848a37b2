"""Request bodies (OpenAI fields plus personavec's extensions) and the OpenAI error shape."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from personavec.core.models import Message

RequestT = TypeVar("RequestT", bound=BaseModel)


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line ``message``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it."""
        error = {"message": self.message, "type": self.kind, "param": self.param}
        return {"error": {**error, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SteeringItem(_Strict):
    """One steering setting; omitted fields come from the vector's calibration."""

    vector: str
    layer: int | list[int] | str | None = None
    coef: float | None = None
    unit: Literal["raw", "relative"] | None = None
    positions: Literal["all", "prompt", "response"] | None = None
    op: Literal["add", "ablate", "cap"] = "add"
    mode: Literal["stack", "incremental"] = "stack"
    threshold: float | str | None = None
    bound: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _fields_fit_the_op(self) -> SteeringItem:
        """Refuse a field the operator does not use (it would be dropped without a word)."""
        unused = {"add": ("threshold", "bound"), "ablate": ("coef", "unit", "threshold", "bound")}
        unused["cap"] = ("coef", "unit")
        for name in unused[self.op]:
            if name in self.model_fields_set and getattr(self, name) is not None:
                raise PydanticCustomError(
                    "unused_field",
                    "{name} does not apply to op {op!r}; leave it out",
                    {"name": name, "op": self.op},
                )
        return self


class MonitorItem(_Strict):
    """A vector to read at ``layer`` (default: its recommended layer)."""

    vector: str
    layer: int | None = None


class GuardItem(_Strict):
    """Subtract ``coef · v`` at generated tokens whose projection exceeds ``threshold``."""

    vector: str
    threshold: float | str
    layer: int | None = None
    coef: float | None = Field(default=None, ge=0)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by both endpoints; unknown standard fields are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    steering: list[SteeringItem] = Field(default_factory=list)
    monitor: list[str | MonitorItem] = Field(default_factory=list)
    guard: list[GuardItem] = Field(default_factory=list)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return value

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def monitor_items(self) -> list[MonitorItem]:
        return [MonitorItem(vector=m) if isinstance(m, str) else m for m in self.monitor]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def as_message(self) -> Message:
        """Our chat format: ``developer`` becomes ``system``; text parts are joined."""
        content = self.content
        if isinstance(content, list):
            parts = [p.get("text") for p in content if p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise ValueError("only text content parts are supported")
            content = "".join(str(p) for p in parts)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def chat(self) -> list[Message]:
        return [m.as_message() for m in self.messages]

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprob_count(self) -> int | None:
        """``None``: no logprobs; otherwise how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt is an empty list")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs


def parse_body(raw: bytes, model: type[RequestT]) -> RequestT:
    """Validate a JSON body; any problem becomes a 400 :class:`ApiError` with one line."""
    too_deep = ApiError(400, "the body is nested too deeply; send a flatter JSON object")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc}); send a JSON object") from None
    except RecursionError:
        raise too_deep from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except RecursionError:
        raise too_deep from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        raise ApiError(400, message, param=where or None) from None

"""Several persona vectors at once: a compact spec string, batched steered answers, and chat.

Spec string (CLI ``--steer`` and the chat's ``/steer``)::

    FILE[:layer[:coef[:positions[:op]]]]

``layer`` is ``12``, ``8-16`` or ``8,12``; ``coef`` a number; ``positions`` ``all``, ``prompt``
or ``response``; ``op`` ``add`` or ``ablate``. An empty or missing part falls back to the vector
file's recommended layer / coefficient, positions ``all`` (or as calibrated) and op ``add``
(e.g. ``evil.safetensors::4`` keeps the file's layer and sets the coefficient to 4).

All requests given together are applied together: their interventions go into one
:func:`personavec.core.steering.steer` context (at a shared layer they are applied in order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from personavec.core.models import LoadedModel, Message
from personavec.core.positions import POSITION_MODES
from personavec.core.steering import OPERATORS, Intervention, steer
from personavec.engines.answering import SteerRequest
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import PersonavecError, SteeringError

SPEC_HELP = "FILE[:layer[:coef[:positions[:op]]]], e.g. evil.safetensors:12:4 or v.safetensors:8-16"


@dataclass(frozen=True)
class SteerSpec:
    """A parsed ``--steer`` string; ``None`` means "the vector file's recommendation"."""

    path: Path
    layers: list[int] | None = None
    coef: float | None = None
    positions: str | None = None
    """``None``: ``all``, or the positions the file's calibration was made at."""
    op: str = "add"

    def build(
        self, loaded: LoadedModel, *, relative: bool | None = None, force: bool = False
    ) -> SteerRequest:
        """Load the vector and validate the request against ``loaded``."""
        if not self.path.is_file():
            raise SteeringError(f"vector file not found: {self.path}")
        return SteerRequest.build(
            self.path,
            loaded,
            layers=self.layers,
            coef=self.coef,
            positions=self.positions,
            op=self.op,
            relative=relative,
            force=force,
        )


def parse_layer_list(text: str) -> list[int]:
    """``"12"``, ``"8,12"`` or ``"8-16"`` → sorted distinct layers."""
    layers: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise ValueError(part)
            if "-" in part[1:]:
                start, end = (int(x) for x in part.split("-", 1))
                if end < start:
                    raise ValueError(part)
                layers.update(range(start, end + 1))
            else:
                layers.add(int(part))
    except ValueError:
        raise SteeringError(f"cannot read layers {text!r}; write e.g. 12, 8,12 or 8-16") from None
    if any(layer < 0 for layer in layers):
        raise SteeringError(f"layers must be >= 0, got {text!r}")
    return sorted(layers)


def parse_coef(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        message = f"cannot read coefficient {text!r}; write a number, e.g. 4 or -0.5"
        raise SteeringError(message) from None
    if not math.isfinite(value):
        raise SteeringError(f"coefficient {text!r} is not a finite number")
    return value


def _split_path(text: str) -> tuple[str, list[str]]:
    """Split ``FILE:rest…``; a path that itself holds ``:`` (``C:\\v.safetensors``) is kept whole
    when that file exists."""
    parts = text.split(":")
    for k in range(len(parts), 1, -1):
        candidate = ":".join(parts[:k])
        if Path(candidate).is_file():
            return candidate, parts[k:]
    return parts[0], parts[1:]


def parse_steer_spec(text: str) -> SteerSpec:
    """Parse ``FILE[:layer[:coef[:positions[:op]]]]`` (see the module docstring)."""
    raw = text.strip()
    if not raw:
        raise SteeringError(f"empty steering spec; write {SPEC_HELP}")
    path, rest = _split_path(raw)
    if not path.strip():
        raise SteeringError(f"steering spec {text!r} names no vector file; write {SPEC_HELP}")
    if len(rest) > 4:
        raise SteeringError(f"steering spec {text!r} has too many ':' parts; write {SPEC_HELP}")
    rest = [part.strip() for part in rest] + [""] * (4 - len(rest))
    layer_text, coef_text, positions, op = rest
    layers = parse_layer_list(layer_text) if layer_text else None
    coef = parse_coef(coef_text) if coef_text else None
    op = op or "add"
    if positions and positions not in POSITION_MODES:
        raise SteeringError(
            f"unknown positions {positions!r} in {text!r}; use {', '.join(POSITION_MODES)}"
        )
    if op not in OPERATORS:
        raise SteeringError(f"unknown operator {op!r} in {text!r}; use add or ablate")
    return SteerSpec(Path(path.strip()), layers, coef, positions or None, op)


def build_requests(
    specs: Sequence[str | SteerSpec],
    loaded: LoadedModel,
    *,
    relative: bool | None = None,
    force: bool = False,
) -> list[SteerRequest]:
    """Parse (when given strings) and validate every spec against ``loaded``."""
    parsed = [parse_steer_spec(s) if isinstance(s, str) else s for s in specs]
    return [spec.build(loaded, relative=relative, force=force) for spec in parsed]


def combined_interventions(requests: Sequence[SteerRequest]) -> list[Intervention]:
    """All interventions of all requests, in order."""
    return [item for request in requests for item in request.interventions()]


@contextlib.contextmanager
def steering_context(loaded: LoadedModel, requests: Sequence[SteerRequest]) -> Iterator[None]:
    """Apply every request at once (nothing when the list is empty)."""
    if not requests:
        yield
        return
    with steer(loaded.model, combined_interventions(requests)):
        yield


def describe_all(requests: Sequence[SteerRequest]) -> str:
    return "; ".join(r.describe() for r in requests) if requests else "unsteered"


def answer_chats(
    loaded: LoadedModel,
    chats: Sequence[Sequence[Message]],
    config: SamplingConfig,
    requests: Sequence[SteerRequest] = (),
    *,
    ids: Sequence[str] | None = None,
) -> list[str]:
    """The first sample's answer to each chat, all in batched generation under all ``requests``."""
    if not chats:
        return []
    for chat in chats:
        if not chat or chat[-1].get("role") != "user":
            raise PersonavecError("every chat must end with a user message")
    keys: Sequence[str | None] = ids if ids is not None else [None] * len(chats)
    items = [GenerationRequest(list(chat), key) for chat, key in zip(chats, keys, strict=True)]
    engine = HFEngine(loaded)
    with steering_context(loaded, requests):
        generations = engine.generate(items, config)
    return [g.response_text.strip() for g in generations if g.sample_index == 0]


# ---- chat -----------------------------------------------------------------------------------

CHAT_HELP = """commands:
  /steer FILE[:layer[:coef[:positions[:op]]]]   add a vector
  /coef NAME VALUE     change a vector's coefficient
  /layer NAME L        change its layer(s): 12, 8-16 or 8,12
  /off NAME            stop steering with it
  /list                show active steering
  /system TEXT         set the system prompt (empty: none)
  /reset               forget the conversation
  /help                this text
  /quit                leave"""


@dataclass
class CommandResult:
    """What a chat command printed, and whether the chat should end."""

    text: str
    quit: bool = False


@dataclass
class ChatSession:
    """A multi-turn chat with a model under a changeable set of persona vectors.

    ``history`` holds the user/assistant turns (the system prompt is kept apart, so
    ``/system`` changes it for the whole conversation). ``steering`` maps a short name
    (the vector file's stem, made unique) to its request; all are applied together.
    """

    loaded: LoadedModel
    config: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=128, temperature=0.0)
    )
    system: str | None = None
    relative: bool | None = None
    force: bool = False
    history: list[Message] = field(default_factory=list)
    steering: dict[str, SteerRequest] = field(default_factory=dict)
    turns: int = 0

    # ---- steering ---------------------------------------------------------------------------
    def add(self, spec: str | SteerSpec | SteerRequest, name: str | None = None) -> str:
        """Add a vector; returns the name to refer to it by."""
        if isinstance(spec, SteerRequest):
            request = spec
            base = name or spec.vector.meta.trait
        else:
            parsed = parse_steer_spec(spec) if isinstance(spec, str) else spec
            request = parsed.build(self.loaded, relative=self.relative, force=self.force)
            base = name or parsed.path.stem
        unique, n = base, 2
        while unique in self.steering:
            unique, n = f"{base}-{n}", n + 1
        self.steering[unique] = request
        return unique

    def _get(self, name: str) -> SteerRequest:
        if name not in self.steering:
            known = ", ".join(self.steering) or "none"
            raise SteeringError(f"no active vector named {name!r} (active: {known})")
        return self.steering[name]

    def _replace(self, name: str, **changes: object) -> SteerRequest:
        request = dataclasses.replace(self._get(name), **changes)  # type: ignore[arg-type]
        request.interventions()  # validate before it replaces the working one
        self.steering[name] = request
        return request

    def set_coef(self, name: str, coef: float) -> SteerRequest:
        return self._replace(name, coef=float(coef))

    def set_layers(self, name: str, layers: Sequence[int]) -> SteerRequest:
        return self._replace(name, layers=list(layers))

    def remove(self, name: str) -> None:
        self._get(name)
        del self.steering[name]

    def describe(self) -> str:
        if not self.steering:
            return "no steering"
        return "\n".join(f"{name}: {r.describe()}" for name, r in self.steering.items())

    # ---- conversation -----------------------------------------------------------------------
    def messages(self, text: str) -> list[Message]:
        out: list[Message] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        out.extend(self.history)
        out.append({"role": "user", "content": text})
        return out

    def send(self, text: str) -> str:
        """Answer ``text`` in the context of the conversation so far, and remember both."""
        reply = answer_chats(
            self.loaded,
            [self.messages(text)],
            self.config,
            list(self.steering.values()),
            ids=[f"turn-{self.turns}"],
        )[0]
        self.history.extend(
            [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        )
        self.turns += 1
        return reply

    def reset(self) -> None:
        self.history.clear()
        self.turns = 0

    # ---- commands ---------------------------------------------------------------------------
    def command(self, line: str) -> CommandResult:
        """Run one ``/command`` line; raises :class:`PersonavecError` on a bad one."""
        head, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        name, _, value = rest.partition(" ")
        value = value.strip()
        if head in ("/quit", "/exit", "/q"):
            return CommandResult("bye", quit=True)
        if head == "/help":
            return CommandResult(CHAT_HELP)
        if head == "/list":
            return CommandResult(self.describe())
        if head == "/reset":
            self.reset()
            return CommandResult("conversation cleared")
        if head == "/system":
            self.system = rest or None
            return CommandResult(f"system prompt: {self.system!r}" if self.system else "no system")
        if head == "/steer":
            if not rest:
                raise SteeringError(f"usage: /steer {SPEC_HELP}")
            added = self.add(rest)
            return CommandResult(f"{added}: {self.steering[added].describe()}")
        if head == "/off":
            if not rest:
                raise SteeringError("usage: /off NAME")
            self.remove(rest)
            return CommandResult(f"{rest}: off")
        if head == "/coef":
            if not value:
                raise SteeringError("usage: /coef NAME VALUE")
            return CommandResult(f"{name}: {self.set_coef(name, parse_coef(value)).describe()}")
        if head == "/layer":
            if not value:
                raise SteeringError("usage: /layer NAME L")
            request = self.set_layers(name, parse_layer_list(value))
            return CommandResult(f"{name}: {request.describe()}")
        raise PersonavecError(f"unknown command {head!r}; type /help")


__all__ = [
    "CHAT_HELP",
    "ChatSession",
    "CommandResult",
    "SteerSpec",
    "answer_chats",
    "build_requests",
    "combined_interventions",
    "describe_all",
    "parse_coef",
    "parse_layer_list",
    "parse_steer_spec",
    "steering_context",
]

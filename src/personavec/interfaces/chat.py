"""Chat with a model under a changeable set of persona vectors (``personavec chat``).

Vectors are added with the spec string of :func:`personavec.core.setting.parse_steer_spec`
(``FILE[:layer[:coef[:positions[:op]]]]``); all active settings are applied together (at a shared
layer in order), through :func:`personavec.engines.answering.answer_chats`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from personavec.core.models import LoadedModel, Message
from personavec.core.setting import (
    SPEC_HELP,
    SteeringSetting,
    Unit,
    parse_coef,
    parse_layers,
    parse_steer_spec,
)
from personavec.engines.answering import answer_chats
from personavec.engines.generation import SamplingConfig
from personavec.errors import PersonavecError, SteeringError


def describe_all(settings: Sequence[SteeringSetting]) -> str:
    """All settings on one line (``unsteered`` when there are none)."""
    return "; ".join(s.describe() for s in settings) if settings else "unsteered"


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
    unit: Unit | None = None
    """Unit of coefficients given in specs (None: raw, or as calibrated in the file)."""
    force: bool = False
    history: list[Message] = field(default_factory=list)
    steering: dict[str, SteeringSetting] = field(default_factory=dict)
    turns: int = 0

    # ---- steering ---------------------------------------------------------------------------
    def add(self, spec: str | SteeringSetting, name: str | None = None) -> str:
        """Add a vector (a spec string or a setting); returns the name to refer to it by."""
        setting = parse_steer_spec(spec, unit=self.unit) if isinstance(spec, str) else spec
        setting.check_compatible(self.loaded.model, force=self.force)
        path = setting.vector.path
        base = name or (path.stem if path is not None else setting.vector.meta.trait)
        request = setting
        unique, n = base, 2
        while unique in self.steering:
            unique, n = f"{base}-{n}", n + 1
        self.steering[unique] = request
        return unique

    def _get(self, name: str) -> SteeringSetting:
        if name not in self.steering:
            known = ", ".join(self.steering) or "none"
            raise SteeringError(f"no active vector named {name!r} (active: {known})")
        return self.steering[name]

    def _replace(self, name: str, **changes: object) -> SteeringSetting:
        # the frozen setting re-validates; the working one stays when the change is refused
        setting = dataclasses.replace(self._get(name), **changes)  # type: ignore[arg-type]
        self.steering[name] = setting
        return setting

    def set_coef(self, name: str, coef: float) -> SteeringSetting:
        return self._replace(name, coef=float(coef))

    def set_layers(self, name: str, layers: Sequence[int]) -> SteeringSetting:
        return self._replace(name, layers=tuple(layers))

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
            request = self.set_layers(name, parse_layers(value, self.loaded.n_layers))
            return CommandResult(f"{name}: {request.describe()}")
        raise PersonavecError(f"unknown command {head!r}; type /help")


__all__ = [
    "CHAT_HELP",
    "ChatSession",
    "CommandResult",
    "describe_all",
]

"""One sequence the server decodes (a request's choice) and the events it reports.

A :class:`Job` is made by the app, queued by the scheduler and decoded in a batch row; while it
decodes, the row reports :class:`Started`, one :class:`TokenEvent` per answer token, then
:class:`Finished` (or :class:`Failed`) through ``job.report``, which the app hands to the event
loop thread-safely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from personavec.core.steering import Intervention
from personavec.serve.vectors import RowReadout


@dataclass(frozen=True)
class Started:
    """Prefill done: prompt length and the last prompt token's readings (response keys)."""

    prompt_tokens: int
    prompt_last: dict[str, float] | None


@dataclass(frozen=True)
class TokenEvent:
    """One answer token: its text piece, id, readings, log-probability and alternatives."""

    index: int
    token_id: int
    text: str
    values: dict[str, float] | None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


@dataclass(frozen=True)
class Finished:
    """``finish_reason`` is ``stop`` or ``length``; ``guarded``: token indices the guard changed."""

    finish_reason: str
    completion_tokens: int
    guarded: list[int] | None


@dataclass(frozen=True)
class Failed:
    """The batch raised; ``status`` is the HTTP status to answer with."""

    message: str
    status: int = 500


JobEvent = Started | TokenEvent | Finished | Failed


@dataclass(eq=False)  # compared by identity: a job is one request's choice
class Job:
    """One sequence to decode.

    Attributes:
        prompt_ids: the (chat-formatted) prompt's token ids.
        max_tokens: most answer tokens.
        temperature, top_p: sampling (``temperature == 0``: greedy); each row samples alone.
        seed: the row's private random stream (unused when greedy).
        interventions: steering for this row (``rows`` unset; the decoder sets it).
        readout: what to monitor and guard.
        stops: stop strings (excluded from the answer).
        logprobs: ``None`` or how many alternatives per token.
        setting: the request's steering and guards in words (``""``: none), named when the row's
            activations become NaN or inf.
        report: receives the events, from the scheduler's thread.
        cancelled: set to stop decoding at the next step (a client that went away, a timeout).
        started: set once the job reported its first event.
    """

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    interventions: list[Intervention]
    readout: RowReadout
    stops: list[str]
    logprobs: int | None
    report: Callable[[JobEvent], None]
    setting: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: bool = False

    @property
    def monitored(self) -> bool:
        return bool(self.readout.specs)

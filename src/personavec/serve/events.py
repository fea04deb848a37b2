"""How a request waits for its jobs' events: collected into one response, or streamed.

The scheduler's thread hands each event to the request's event loop (:func:`deliver`); the
request then reads them until every choice has finished, cancelling its jobs when the client goes
away or the deadline passes (504).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request

from personavec.serve.jobs import Failed, Finished, Job, JobEvent
from personavec.serve.responses import ChoiceState, ResponseBuilder
from personavec.serve.schemas import ApiError

_POLL_S = 0.5  # how often a waiting non-streaming request checks for a disconnect


def deliver(
    loop: asyncio.AbstractEventLoop,
    events: asyncio.Queue[tuple[int, JobEvent]],
    choice: int,
    event: JobEvent,
) -> None:
    """Called from the scheduler's thread: hand the event to the request's loop."""
    # RuntimeError: the loop is gone (the server is shutting down), so nobody is listening.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(events.put_nowait, (choice, event))


def _cancel(jobs: list[Job]) -> None:
    for job in jobs:
        job.cancelled.set()


async def _next_event(
    request: Request,
    events: asyncio.Queue[tuple[int, JobEvent]],
    jobs: list[Job],
    deadline: float,
) -> tuple[int, JobEvent] | None:
    """The next event; None when the client went away; 504 at the deadline."""
    loop = asyncio.get_running_loop()
    while True:
        left = deadline - loop.time()
        if left <= 0:
            _cancel(jobs)
            raise ApiError(
                504,
                "the request timed out; ask for fewer tokens or retry",
                kind="timeout_error",
                code="timeout",
            )
        try:
            return await asyncio.wait_for(events.get(), min(left, _POLL_S))
        except TimeoutError:
            if await request.is_disconnected():
                _cancel(jobs)
                return None


async def collect(
    request: Request,
    events: asyncio.Queue[tuple[int, JobEvent]],
    jobs: list[Job],
    deadline: float,
) -> list[ChoiceState]:
    choices = [ChoiceState() for _ in jobs]
    open_choices = len(jobs)
    while open_choices:
        item = await _next_event(request, events, jobs, deadline)
        if item is None:
            raise ApiError(499, "the client closed the connection")
        index, event = item
        if isinstance(event, Failed):
            _cancel(jobs)
            raise _failure_error(event)
        choices[index].add(event)
        open_choices -= isinstance(event, Finished)
    return choices


async def stream_events(
    request: Request,
    events: asyncio.Queue[tuple[int, JobEvent]],
    jobs: list[Job],
    builder: ResponseBuilder,
    deadline: float,
    *,
    include_usage: bool,
) -> AsyncGenerator[str, None]:
    """Server-sent events; stops (and frees the jobs' rows) when the client goes away."""
    choices = [ChoiceState() for _ in jobs]
    open_choices = len(jobs)
    try:
        while open_choices:
            try:
                item = await _next_event(request, events, jobs, deadline)
            except ApiError as exc:
                yield _sse(exc.body())
                return
            if item is None:
                return
            index, event = item
            if isinstance(event, Failed):
                yield _sse(_failure_error(event).body())
                return
            choices[index].add(event)
            open_choices -= isinstance(event, Finished)
            chunk = builder.chunk(index, event)
            if chunk is not None:
                yield _sse(chunk)
        if include_usage:
            yield _sse(builder.usage_chunk(choices))
        yield "data: [DONE]\n\n"
    finally:
        _cancel(jobs)


def _failure_error(event: Failed) -> ApiError:
    kind = "server_error" if event.status >= 500 else "invalid_request_error"
    return ApiError(event.status, event.message, kind=kind)


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

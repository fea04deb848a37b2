"""Continuous batching on the model: requests join and leave the running batch between steps.

One worker thread owns the model and a :class:`~personavec.serve.decoder.Decoder`. When nothing
is running it waits for work and gives late arrivals ``batch_wait_ms`` to join; while rows are
decoding, queued jobs are prefilled and merged into the running batch before the next step, up
to ``max_batch`` rows. Each row has its own steering (its interventions apply to its row only),
sampling, monitor specs and guards, so a greedy job gets exactly the tokens it gets alone. A
cancelled job leaves the batch at the next step, and one waiting in the queue never starts.

A model whose KV cache cannot be merged (sliding-window or linear-attention layers; checked once
here, at start-up) is served one sequence at a time: each job is decoded alone, to its end,
before the next starts; :attr:`Scheduler.notice` says so in one line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from personavec.core.models import LoadedModel
from personavec.engines.generation import HFEngine
from personavec.errors import PersonavecError, SteeringError
from personavec.serve.decoder import Decoder, joins_batches
from personavec.serve.jobs import Failed, Job
from personavec.serve.schemas import ApiError

log = logging.getLogger("personavec.serve")


@dataclass
class SchedulerStats:
    """Counters since start: admissions (prefill passes), the largest batch, forward passes
    (``steps``), and sequences currently decoding (``active``)."""

    batches: int = 0
    largest_batch: int = 0
    steps: int = 0
    active: int = 0


class Scheduler:
    """Queue jobs with :meth:`submit`; a background thread decodes them, batched."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        batch_wait_ms: float = 10.0,
    ) -> None:
        self.loaded = loaded
        self.engine = HFEngine(loaded)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_ms / 1000
        self.stats = SchedulerStats()
        self.joins = joins_batches(loaded.model.config)
        self.notice: str | None = None
        if not self.joins:
            self.notice = (
                f"{loaded.model_id} has sliding-window or linear-attention layers, whose KV "
                "cache cannot be batched continuously; serving one sequence at a time"
            )
            log.warning(self.notice)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="personavec-scheduler", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue a request's jobs together, or raise a 429 :class:`ApiError` when full."""
        with self._cond:
            if len(self._queue) + len(jobs) > self.max_queue:
                raise ApiError(
                    429,
                    f"the server's queue is full ({self.max_queue} sequences); retry later",
                    kind="rate_limit_error",
                    code="queue_full",
                )
            self._queue.extend(jobs)
            self._cond.notify()

    def stop(self) -> None:
        """Stop the worker after the current batch."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # ---- worker ---------------------------------------------------------------------------
    def _loop(self) -> None:
        decoder = Decoder(self.loaded, self.engine.stop_ids, self.engine.pad_id)
        while True:
            jobs = self._take(decoder.size)
            if jobs is None:
                decoder.close_all()
                return
            if jobs:
                self.stats.largest_batch = max(self.stats.largest_batch, decoder.size + len(jobs))
                self._admit(decoder, jobs)
            if decoder.size:
                try:
                    decoder.step()
                except Exception as exc:  # a failing step fails the rows in it, not the server
                    decoder.release()
                    for row in decoder.live:
                        row.state.fail(_failure(exc))
                        row.state.deliver()
                    decoder = Decoder(self.loaded, self.engine.stop_ids, self.engine.pad_id)
            if not decoder.size:
                decoder.release()  # idle: the model carries no hooks between requests
            self.stats.active = decoder.size
            self.stats.steps = decoder.steps

    def _admit(self, decoder: Decoder, jobs: list[Job]) -> None:
        """Prefill ``jobs`` into the running batch; if that fails, admit each job alone, so one
        bad request (e.g. steering that overflows) fails by itself and the others go on."""
        self.stats.batches += 1
        try:
            decoder.admit(jobs)
            return
        except Exception as exc:
            failure = exc
        if len(jobs) == 1:
            jobs[0].report(_failure(failure, jobs[0]))
            return
        for job in jobs:
            try:
                decoder.admit([job])
            except Exception as exc:
                job.report(_failure(exc, job))

    def _take(self, running: int) -> list[Job] | None:
        """Queued jobs to admit now (None: stop). With nothing running, wait for work, then give
        late arrivals ``batch_wait_ms`` to join; otherwise take what is queued without waiting.
        A model that cannot join batches takes one job, and only when nothing runs."""
        room = self.max_batch - running if self.joins else int(running == 0)
        with self._cond:
            if running == 0:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                deadline = time.monotonic() + self.batch_wait_s
                while len(self._queue) < room and not self._stopped:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._stopped:
                return None
            taken: list[Job] = []
            while self._queue and len(taken) < room:
                job = self._queue.popleft()
                if not job.cancelled.is_set():
                    taken.append(job)
            return taken


def _failure(exc: Exception, job: Job | None = None) -> Failed:
    """A one-line :class:`Failed`: 400 for a problem with the request (a steering problem names
    ``job``'s setting), 500 otherwise."""
    if not isinstance(exc, PersonavecError):
        log.error("batch failed", exc_info=exc)
    message = str(exc).splitlines()[0] if str(exc) else repr(exc)
    if isinstance(exc, SteeringError) and job is not None and job.setting:
        message = f"{job.setting}: {message}"
    return Failed(message, 400 if isinstance(exc, PersonavecError) else 500)

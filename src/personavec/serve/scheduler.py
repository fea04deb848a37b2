"""Dynamic batching on the HF engine: queued jobs with the same sampling share one batch.

One worker thread owns the model. It waits for jobs, gives late arrivals ``batch_wait_ms`` to
join, then decodes up to ``max_batch`` jobs with equal ``(temperature, top_p)`` in one
left-padded batch (:meth:`HFEngine.generate_batch`). Each row has its own steering (its
interventions apply to its row only), monitor specs and guards, so a greedy job gets exactly
the tokens it gets alone. A cancelled job stops at the next step; the batch ends when its last
row does, and jobs waiting in the queue are never started once cancelled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from personavec.core.models import LoadedModel
from personavec.core.steering import steer
from personavec.engines.generation import HFEngine, SamplingConfig
from personavec.errors import PersonavecError
from personavec.monitor.monitor import ConditionalSteering, MonitorSpec, TokenMonitor
from personavec.serve.jobs import Failed, Job
from personavec.serve.rows import BatchController, LogprobRecorder
from personavec.serve.schemas import ApiError

log = logging.getLogger("personavec.serve")


@dataclass
class SchedulerStats:
    """Counters since start: batches run, the largest batch, decoding steps, and sequences
    currently decoding (``active``)."""

    batches: int = 0
    largest_batch: int = 0
    steps: int = 0
    active: int = 0


class Scheduler:
    """Queue jobs with :meth:`submit`; a background thread decodes them in batches."""

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
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self.stats.active = len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            try:
                self._run_isolating(batch)
            finally:
                self.stats.active = 0
                self.stats.batches += 1

    def _run_isolating(self, batch: list[Job]) -> None:
        """Run ``batch``; if it fails, run each job that had not started alone, so one bad
        request (e.g. steering that overflows) fails by itself and the server goes on."""
        try:
            self._run(batch)
            return
        except Exception as exc:
            failure = exc
        retry = [job for job in batch if not job.started] if len(batch) > 1 else []
        for job in batch:
            if job not in retry:
                job.report(_failure(failure))
        for job in retry:
            try:
                self._run([job])
            except Exception as exc:
                job.report(_failure(exc))

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._queue) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            while self._queue and self._queue[0].cancelled.is_set():
                self._queue.popleft()
            if not self._queue:
                return []
            key = self._queue[0].sampling_key
            batch = [j for j in self._queue if j.sampling_key == key and not j.cancelled.is_set()]
            batch = batch[: self.max_batch]
            chosen = {id(j) for j in batch}
            self._queue = deque(
                j for j in self._queue if id(j) not in chosen and not j.cancelled.is_set()
            )
            return batch

    def _run(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        model = self.loaded.model
        interventions = [
            dataclasses.replace(item, rows=(row,))
            for row, job in enumerate(jobs)
            for item in job.interventions
        ]
        specs: dict[str, MonitorSpec] = {}
        guards: list[ConditionalSteering] = []
        for row, job in enumerate(jobs):
            for spec in job.readout.specs:
                specs.setdefault(spec.name, spec)
            guards += [
                dataclasses.replace(g, spec=specs[g.spec.name], rows=(row,))
                for g in job.readout.guards
            ]
        first = jobs[0]
        config = SamplingConfig(
            max_new_tokens=max(j.max_tokens + int(j.monitored) for j in jobs),
            temperature=first.temperature,
            top_p=first.top_p,
            batch_size=len(jobs),
        )
        recorder = LogprobRecorder() if any(j.logprobs is not None for j in jobs) else None
        with contextlib.ExitStack() as stack:
            if interventions:
                stack.enter_context(steer(model, interventions))
            monitor = None
            if specs:
                monitor = TokenMonitor(
                    model, list(specs.values()), conditional=guards, stop_ids=self.engine.stop_ids
                )
                stack.enter_context(monitor)
            controller = BatchController(
                jobs, self.loaded.tokenizer, self.engine.stop_ids, monitor, recorder
            )
            self.engine.generate_batch(
                [j.prompt_ids for j in jobs],
                config,
                seeds=[j.seed for j in jobs],
                stopping=controller,
                observers=[recorder] if recorder else [],
            )
            controller.close()
            self.stats.steps += controller.steps


def _failure(exc: Exception) -> Failed:
    """A one-line :class:`Failed`: 400 for a problem with the request, 500 otherwise."""
    if not isinstance(exc, PersonavecError):
        log.error("batch failed", exc_info=exc)
    message = str(exc).splitlines()[0] if str(exc) else repr(exc)
    return Failed(message, 400 if isinstance(exc, PersonavecError) else 500)

"""Serving on vLLM (``personavec serve --engine vllm``): the server's scheduler, vLLM underneath.

:class:`VLLMScheduler` keeps :class:`~personavec.serve.scheduler.Scheduler`'s queue, limits
and admission (``submit``, ``stop``, the 429 when full) and replaces its worker loop: each
admitted job becomes one vLLM request carrying the job's steering, readings and guards as
:class:`~personavec.engines.vllm_hooks.RequestControls` (salted for the prefix cache), and after
every engine step each row's new readings and tokens go to the same
:class:`~personavec.serve.rows.RowState` the HF decoder feeds, so events, stop strings, SSE
chunks and the response body are the server's own. Requests with different settings decode in
one vLLM batch.

A monitored job asks vLLM for one token more than ``max_tokens``: its last answer token is read
when it is fed back, as in the HF decoder (the extra token is discarded). ``logprobs`` are not
served on this engine: such a request gets a one-line 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from personavec.core.models import LoadedModel
from personavec.engines.generation import SamplingConfig
from personavec.engines.vllm_engine import NOT_SERVED, VLLMEngine, VLLMRuntime
from personavec.engines.vllm_hooks import RequestControls
from personavec.monitor.specs import Reading
from personavec.serve.jobs import Failed, Job
from personavec.serve.rows import RowState
from personavec.serve.scheduler import Scheduler, _failure


@dataclass
class _Live:
    """A job decoding in vLLM: its row state, tokens consumed, next reading position."""

    key: str
    state: RowState
    seen: int = 0
    next_reading: int = 0


class VLLMScheduler(Scheduler):
    """:class:`Scheduler` whose worker drives an in-process vLLM engine (see module docstring)."""

    def __init__(self, loaded: LoadedModel, **limits: Any) -> None:
        self.vllm = VLLMEngine(loaded)  # started here, before the worker thread runs
        super().__init__(loaded, **limits)

    def _loop(self) -> None:
        runtime = self.vllm.runtime
        live: dict[str, _Live] = {}
        while True:
            jobs = self._take(len(live))
            if jobs is None:
                self._drop(runtime, live, list(live))
                return
            if jobs:
                self.stats.batches += 1
                for job in jobs:
                    self._admit_job(runtime, live, job)
                self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            if live:
                try:
                    outputs = runtime.engine.step()
                except Exception as exc:  # a failing step fails its rows, not the server
                    for row in live.values():
                        row.state.fail(_failure(exc))
                        row.state.deliver()
                    self._drop(runtime, live, list(live))
                    continue
                self.stats.steps += 1
                self._feed(runtime, live, outputs)
            self.stats.active = len(live)

    def _admit_job(self, runtime: VLLMRuntime, live: dict[str, _Live], job: Job) -> None:
        if job.logprobs is not None:
            job.report(Failed("logprobs are not served with --engine vllm; omit logprobs", 400))
            return
        max_tokens = job.max_tokens + (1 if job.monitored else 0)
        if len(job.prompt_ids) + max_tokens > runtime.max_model_len:
            message = f"prompt plus max_tokens exceeds vLLM's max_model_len {runtime.max_model_len}"
            job.report(Failed(f"{message}; lower max_tokens", 400))
            return
        key = runtime.new_key()
        readout = job.readout
        controls = RequestControls(
            tuple(job.interventions), tuple(readout.specs), tuple(readout.guards)
        )
        config = SamplingConfig(max_tokens, job.temperature, job.top_p)
        try:
            params = runtime.sampling_params(config, job.seed, key, self.vllm.stop_ids)
            runtime.add(key, job.prompt_ids, params, controls)
        except Exception as exc:
            runtime.hooks.release([key])
            job.report(_failure(exc, job))
            return
        state = RowState(job, self.loaded.tokenizer, set(self.vllm.stop_ids))
        live[key] = _Live(key, state)

    def _feed(self, runtime: VLLMRuntime, live: dict[str, _Live], outputs: list[Any]) -> None:
        """Hand each row its new readings and tokens; retire finished rows."""
        for output in outputs:
            row = live.get(output.request_id)
            if row is None:
                continue
            state = row.state
            record = runtime.hooks.record(row.key)
            # Checked before any token is pushed: a broken or unsteered answer is never sent.
            if record is not None and not record.served and not state.done:
                state.fail(Failed(NOT_SERVED, 500))
            if record is not None and record.non_finite and not state.done:
                message = "steering made the activations NaN or inf; use a smaller coefficient"
                prefix = f"{state.job.setting}: " if state.job.setting else ""
                state.fail(Failed(prefix + message, 400))
            if not state.done:
                state.add_readings(self._readings(row, record), record.guarded if record else ())
                ids = list(output.outputs[0].token_ids)
                for token in ids[row.seen :]:
                    if state.done:
                        break
                    state.push(int(token), None)
                row.seen = len(ids)
            if output.finished and not state.done:
                state.close()
            state.deliver()
            if state.done:
                self._drop(runtime, live, [row.key], finished=output.finished)

    @staticmethod
    def _readings(row: _Live, record: Any) -> list[Reading]:
        """Readings not yet handed out, in position order; the prompt tokens before the last
        (never read here: vLLM may take them from its cache) are empty placeholders."""
        if record is None or not record.readings:
            return []
        out: list[Reading] = []
        prompt_len = row.state.prompt_len
        if row.next_reading == 0:
            out = [Reading(p, True, {}) for p in range(prompt_len - 1)]
            row.next_reading = prompt_len - 1
        while row.next_reading in record.readings:
            position = row.next_reading
            out.append(Reading(position, position < prompt_len, record.readings[position]))
            row.next_reading += 1
        return out

    @staticmethod
    def _drop(
        runtime: VLLMRuntime, live: dict[str, _Live], keys: list[str], *, finished: bool = False
    ) -> None:
        """Stop decoding ``keys`` (abort in vLLM unless it already finished them)."""
        if not finished:
            runtime.engine.abort_request(keys)
        runtime.hooks.release(keys)
        for key in keys:
            live.pop(key, None)

"""Per-row decoding control for a shared batch: stops, readings and events, token by token.

:class:`BatchController` is a transformers ``StoppingCriteria`` called after every decoding step
of :meth:`HFEngine.generate_batch`. For each row (one :class:`~personavec.serve.jobs.Job`) it
appends the new token, ends the row on a stop token, a stop string, ``max_tokens`` or a
cancellation, and reports each answer token once its reading is known.

Readings: the monitor reads a token when it is fed back to the model, one step after it is
generated. A monitored row that ends on ``max_tokens`` or a stop string therefore runs one extra
step, whose token is discarded, so that its last answer token has a reading too; tokens are never
changed by this (a row's earlier tokens do not depend on later steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase, StoppingCriteria

from personavec.monitor.monitor import TokenMonitor
from personavec.serve.jobs import Finished, Job, Started, TokenEvent


class LogprobRecorder(LogitsProcessor):
    """Keeps the latest step's log-softmax of the raw logits ``[batch, vocab]``; changes nothing."""

    def __init__(self) -> None:
        self.latest: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.latest = torch.log_softmax(scores.float(), dim=-1)
        return scores


class _Row:
    """Decoding state of one job."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.prompt_len = len(job.prompt_ids)
        self.tokens: list[int] = []
        self.texts: list[str] = []  # decoded answer after each token
        self.logprobs: list[tuple[float, list[tuple[int, float]]]] = []
        self.emitted = 0
        self.emitted_chars = 0
        self.reason: str | None = None  # set when the answer is complete
        self.cut: int | None = None  # stop-string position in the text
        self.started = False
        self.done = False


class BatchController(StoppingCriteria):
    """Stops rows and reports their events; ``monitor`` must be the batch's monitor (or None)."""

    def __init__(
        self,
        jobs: Sequence[Job],
        tokenizer: PreTrainedTokenizerBase,
        stop_ids: Sequence[int],
        monitor: TokenMonitor | None,
        recorder: LogprobRecorder | None,
    ) -> None:
        self.rows = [_Row(job) for job in jobs]
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.monitor = monitor
        self.recorder = recorder
        self.steps = 0

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        self.steps += 1
        latest = input_ids[:, -1].tolist()
        for index, row in enumerate(self.rows):
            if not row.done:
                self._step(index, row, int(latest[index]))
        done = [row.done for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def close(self) -> None:
        """Finish rows still open when generation ended (e.g. the engine's own length limit)."""
        for index, row in enumerate(self.rows):
            if not row.done and not row.job.cancelled.is_set():
                row.reason = row.reason or "length"
                self._finish(index, row)
            row.done = True

    # ---- one step of one row --------------------------------------------------------------
    def _step(self, index: int, row: _Row, token: int) -> None:
        job = row.job
        if job.cancelled.is_set():
            row.done = True
            return
        if not row.started:
            row.started = job.started = True
            job.report(Started(row.prompt_len, self._prompt_last(index, row)))
        if row.reason is not None:  # the extra step that read the last answer token
            self._finish(index, row)
            return
        if token in self.stop_ids:
            row.reason = "stop"
            self._finish(index, row)
            return
        self._append(index, row, token)
        if row.reason is not None and not job.monitored:
            self._finish(index, row)
            return
        self._emit(index, row, final=False)

    def _append(self, index: int, row: _Row, token: int) -> None:
        job = row.job
        row.tokens.append(token)
        if job.logprobs is not None and self.recorder is not None:
            assert self.recorder.latest is not None
            step = self.recorder.latest[index]
            top = torch.topk(step, job.logprobs) if job.logprobs else None
            alternatives = (
                list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else []
            )
            row.logprobs.append((float(step[token]), alternatives))
        text = str(self.tokenizer.decode(row.tokens, skip_special_tokens=True))
        row.texts.append(text)
        if job.stops:
            previous = len(row.texts[-2]) if len(row.texts) > 1 else 0
            start = max(0, previous - max(len(s) for s in job.stops) + 1)
            hits = [found for s in job.stops if (found := text.find(s, start)) >= 0]
            if hits:
                row.reason, row.cut = "stop", min(hits)
                return
        if len(row.tokens) >= job.max_tokens:
            row.reason = "length"

    def _finish(self, index: int, row: _Row) -> None:
        self._emit(index, row, final=True)
        job = row.job
        guarded = None
        if job.readout.guards and self.monitor is not None:
            kept = row.emitted
            positions = self.monitor.steered[index]
            guarded = sorted({p - row.prompt_len for p in positions} & set(range(kept)))
        job.report(Finished(row.reason or "length", row.emitted, guarded))
        row.done = True

    # ---- events ---------------------------------------------------------------------------
    def _kept(self, row: _Row) -> int:
        """Answer tokens: those starting before a stop string's cut."""
        if row.cut is None:
            return len(row.tokens)
        starts = [0] + [len(t) for t in row.texts[:-1]]
        return sum(1 for start in starts if start < row.cut)

    def _emit(self, index: int, row: _Row, *, final: bool) -> None:
        """Report answer tokens not yet reported whose reading (and text) is settled."""
        job = row.job
        if not row.texts:
            return
        text = row.texts[-1] if row.cut is None else row.texts[-1][: row.cut]
        ready = self._kept(row) if final else len(row.tokens)
        if not final and job.monitored:
            ready = min(ready, self._read_count(index, row))
        if not final and job.stops:
            safe = len(text) - max(len(s) for s in job.stops) + 1
            while ready > row.emitted and len(row.texts[ready - 1]) > safe:
                ready -= 1
        for i in range(row.emitted, ready):
            end = len(text) if final and i == ready - 1 else min(len(row.texts[i]), len(text))
            if row.texts[i].endswith("\ufffd") and not (final and i == ready - 1):
                end = row.emitted_chars  # a partial character: its text comes with a later token
            piece = text[row.emitted_chars : max(end, row.emitted_chars)]
            row.emitted_chars += len(piece)
            logprob, top = row.logprobs[i] if i < len(row.logprobs) else (None, None)
            values = self._values(index, row, row.prompt_len + i) if job.monitored else None
            job.report(TokenEvent(i, row.tokens[i], piece, values, logprob, top))
        row.emitted = max(row.emitted, ready)

    def _read_count(self, index: int, row: _Row) -> int:
        assert self.monitor is not None
        return max(0, len(self.monitor.readings[index]) - row.prompt_len)

    def _values(self, index: int, row: _Row, position: int) -> dict[str, float]:
        assert self.monitor is not None
        reading = self.monitor.readings[index][position]
        keys = row.job.readout.keys
        return {keys[name]: reading.values[name] for name in keys}

    def _prompt_last(self, index: int, row: _Row) -> dict[str, float] | None:
        if not row.job.monitored or self.monitor is None:
            return None
        return self._values(index, row, row.prompt_len - 1)

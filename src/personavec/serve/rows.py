"""One decoding row's state: its tokens, stops, readings and events, step by step.

The decoder (:mod:`personavec.serve.decoder`) calls :meth:`RowState.add_readings` after each
forward pass and :meth:`RowState.push` with each chosen token. The row ends on a stop token, a
stop string, ``max_tokens`` or a cancellation, and reports each answer token once its reading is
known (gathered, and handed to the job by :meth:`RowState.deliver` when the step is over).

Readings: the monitor reads a token when it is fed back to the model, one step after it is
chosen. A monitored row that ends on ``max_tokens`` or a stop string therefore stays for one
extra step, whose token is discarded, so that its last answer token has a reading too; tokens are
never changed by this (a row's earlier tokens do not depend on later steps).

Text: the answer is detokenized incrementally, each step decoding only the tokens since the last
complete character with one earlier chunk as context (so a tokenizer's leading-space rules see
what they would see in the whole answer), not the whole answer again. Tokens that end inside a
multi-byte character add no text until a later token completes it; at the end, whatever is
pending is decoded as it stands, so the text equals the whole answer decoded at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PreTrainedTokenizerBase

from personavec.monitor.specs import Reading
from personavec.serve.jobs import Failed, Finished, Job, JobEvent, Started, TokenEvent


class RowState:
    """Decoding state of one :class:`~personavec.serve.jobs.Job`."""

    def __init__(self, job: Job, tokenizer: PreTrainedTokenizerBase, stop_ids: set[int]) -> None:
        self.job = job
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.prompt_len = len(job.prompt_ids)
        self.tokens: list[int] = []
        self.text = ""  # the decoded answer so far
        self.ends: list[int] = []  # length of the decoded answer after each token
        self.partial: list[bool] = []  # this token's text waits for a later token
        self._context = 0  # first token of the context the next decode starts from
        self._decoded = 0  # tokens whose text is in self.text
        self.logprobs: list[tuple[float, list[tuple[int, float]]]] = []
        self.readings: list[Reading] = []  # prompt tokens, then fed answer tokens
        self.guarded: set[int] = set()  # positions the guard changed
        self.emitted = 0
        self.emitted_chars = 0
        self.reason: str | None = None  # set when the answer is complete
        self.cut: int | None = None  # stop-string position in the text
        self.done = False
        self._events: list[JobEvent] = []  # reported by deliver()

    # ---- inputs from the decoder ----------------------------------------------------------
    def add_readings(self, readings: Iterable[Reading], steered: Iterable[int]) -> None:
        """The readings (and guarded positions) of this row in the latest forward pass."""
        first = not self.readings
        self.readings.extend(readings)
        self.guarded.update(steered)
        if first and not self.job.started:
            self.job.started = True
            self._events.append(Started(self.prompt_len, self._prompt_last()))

    def push(self, token: int, log_probs: torch.Tensor | None) -> None:
        """The token chosen at this step (``log_probs``: float32 ``[vocab]`` of the raw logits)."""
        job = self.job
        if job.cancelled.is_set():
            self.done = True
        elif self.reason is not None:  # the extra step that read the last answer token
            self._finish()
        elif token in self.stop_ids:
            self.reason = "stop"
            self._finish()
        else:
            self._append(token, log_probs)
            if self.reason is not None and not job.monitored:
                self._finish()
            else:
                self._emit(final=False)

    def deliver(self) -> None:
        """Report the events gathered since the last call to the job. The decoder calls it once a
        step is over (hooks removed when the batch emptied), so a client that has its answer
        finds the model as it was."""
        events, self._events = self._events, []
        for event in events:
            self.job.report(event)

    def fail(self, failure: Failed) -> None:
        """End the row now with ``failure`` (its request gets that error)."""
        if not self.done:
            self._events.append(failure)
        self.done = True

    def close(self) -> None:
        """End the row now (e.g. the context is full)."""
        if not self.done and not self.job.cancelled.is_set():
            self.reason = self.reason or "length"
            self._finish()
        self.done = True

    # ---- one token ------------------------------------------------------------------------
    def _append(self, token: int, log_probs: torch.Tensor | None) -> None:
        job = self.job
        self.tokens.append(token)
        if job.logprobs is not None and log_probs is not None:
            top = torch.topk(log_probs, job.logprobs) if job.logprobs else None
            alternatives = (
                list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else []
            )
            self.logprobs.append((float(log_probs[token]), alternatives))
        complete = self._decode(final=False)
        text = self.text
        self.ends.append(len(text))
        self.partial.append(not complete)
        if job.stops:
            previous = self.ends[-2] if len(self.ends) > 1 else 0
            start = max(0, previous - max(len(s) for s in job.stops) + 1)
            hits = [found for s in job.stops if (found := text.find(s, start)) >= 0]
            if hits:
                self.reason, self.cut = "stop", min(hits)
                return
        if len(self.tokens) >= job.max_tokens:
            self.reason = "length"

    def _decode(self, *, final: bool) -> bool:
        """Append the text of the tokens not decoded yet to :attr:`text`; False (and nothing
        appended) when they end inside a character and ``final`` is False."""
        if self._decoded == len(self.tokens):
            return True

        def decode(ids: list[int]) -> str:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

        before = decode(self.tokens[self._context : self._decoded])
        after = decode(self.tokens[self._context :])
        if after.endswith("\ufffd") and not final:
            return False
        if after.startswith(before):
            self.text += after[len(before) :]
        else:  # the context changed how it decodes: decode the whole answer once
            self.text = decode(self.tokens)
        self._context, self._decoded = self._decoded, len(self.tokens)
        return True

    def _finish(self) -> None:
        if self.cut is None and self._decode(final=True) and self.ends:
            self.ends[-1] = len(self.text)
        self._emit(final=True)
        guarded = None
        if self.job.readout.guards:
            indices = {p - self.prompt_len for p in self.guarded}
            guarded = sorted(indices & set(range(self.emitted)))
        self._events.append(Finished(self.reason or "length", self.emitted, guarded))
        self.done = True

    # ---- events ---------------------------------------------------------------------------
    def _kept(self) -> int:
        """Answer tokens: those starting before a stop string's cut."""
        if self.cut is None:
            return len(self.tokens)
        starts = [0, *self.ends[:-1]]
        return sum(1 for start in starts if start < self.cut)

    def _emit(self, *, final: bool) -> None:
        """Report answer tokens not yet reported whose reading (and text) is settled."""
        job = self.job
        if not self.ends:
            return
        text = self.text if self.cut is None else self.text[: self.cut]
        ready = self._kept() if final else len(self.tokens)
        if not final and job.monitored:
            ready = min(ready, len(self.readings) - self.prompt_len)
        if not final and job.stops:
            safe = len(text) - max(len(s) for s in job.stops) + 1
            while ready > self.emitted and self.ends[ready - 1] > safe:
                ready -= 1
        for i in range(self.emitted, ready):
            last = final and i == ready - 1
            end = len(text) if last else min(self.ends[i], len(text))
            if self.partial[i] and not last:
                end = self.emitted_chars  # a partial character: its text comes with a later token
            piece = text[self.emitted_chars : max(end, self.emitted_chars)]
            self.emitted_chars += len(piece)
            logprob, top = self.logprobs[i] if i < len(self.logprobs) else (None, None)
            values = self._values(self.prompt_len + i) if job.monitored else None
            self._events.append(TokenEvent(i, self.tokens[i], piece, values, logprob, top))
        self.emitted = max(self.emitted, ready)

    def _values(self, position: int) -> dict[str, float]:
        reading = self.readings[position]
        keys = self.job.readout.keys
        return {keys[name]: reading.values[name] for name in keys}

    def _prompt_last(self) -> dict[str, float] | None:
        if not self.job.monitored:
            return None
        return self._values(self.prompt_len - 1)

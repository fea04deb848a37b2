"""Live monitoring: per-token projections onto persona vectors during any forward or ``generate``.

A :class:`TokenMonitor` records the scalar projection ``h · v / ‖v‖`` (hidden-state units) of the
residual stream at chosen layers (block-output convention, see :mod:`personavec.core.layers`)
onto one
or more vectors (:class:`MonitorSpec`), for every real token of every sequence: the prompt
tokens of a prefill call and the token fed at each cached decode step. Padding is never recorded.

Positions are per sequence, as in :mod:`personavec.core.steering`: a forward pre-hook on the module
that owns the decoder blocks reads each call's ``attention_mask`` and the KV-cache length, so a
left-padded batch under cached decoding is recorded exactly like each request alone. The cost is
one ``[tokens, hidden] × [hidden, k]`` matmul per monitored layer per forward call; results stay
on the device and move to the CPU once per call.

Sequences: each prefill call (no KV cache) starts ``batch`` new sequences, numbered in order of
arrival across the monitor's life (``0, 1, …``); cached decode calls continue the sequences of
the latest prefill. Token index ``0`` is a sequence's first real token; generated tokens follow
the prompt. A generated token is read when it is fed back to the model, so the last token of a
``generate`` call (never fed back) has no reading. After a sequence feeds a stop token (its EOS /
end of turn), later tokens of that row (the padding ``generate`` feeds to finished rows) are not
recorded.

Order with steering: hooks run in registration order. A monitor started *after*
:func:`personavec.core.steering.steer` at the same layer sees the steered stream; one started before
it sees the stream before steering. :class:`ConditionalSteering` is part of the monitor: at its
layer, every reading of that layer is the value *before* its change.

Conditional steering subtracts ``coef · v`` (the unnormalised vector, i.e. ``add`` with
``−coef``) from a token's residual at the spec's layer only when that token's projection, measured
just before the change, is above ``threshold``. Below the threshold the stream is left untouched
(``torch.where`` copies the original values), so outputs are bit-identical to running without it.
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from personavec.core.layers import (
    block_output_tensor,
    check_layer,
    find_blocks,
    replace_block_output,
)
from personavec.core.positions import POSITION_MODES, PositionMode, relative_positions
from personavec.core.steering import _PROMPT_LENGTHS, _CallState, _owner_of_blocks, read_call
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError, SteeringError

AlertCallback = Callable[[int, int, str, float], None]
"""``on_alert(sequence, token_index, name, value)``."""


@dataclass(frozen=True)
class MonitorSpec:
    """One vector to watch at one layer.

    Attributes:
        name: label of the readings (unique within a monitor).
        layer: layer under the block-output convention (0 = embeddings, L = output of block L).
        vector: ``[hidden]``, unnormalised; readings are ``h · v / ‖v‖``.
        threshold: alert when a generated token's value is strictly above it (None: no alerts).
    """

    name: str
    layer: int
    vector: torch.Tensor
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise SteeringError("a monitor spec needs a non-empty name")
        if self.vector.ndim != 1:
            raise SteeringError(
                f"monitor vector {self.name!r} must be 1-D [hidden], got {tuple(self.vector.shape)}"
            )
        if not torch.isfinite(self.vector).all():
            raise SteeringError(f"monitor vector {self.name!r} contains NaN or inf")
        if float(self.vector.float().norm()) == 0.0:
            raise SteeringError(f"monitor vector {self.name!r} is zero; pick another layer")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise SteeringError(f"threshold {self.threshold!r} is not a finite number")

    @classmethod
    def from_vector(
        cls,
        vector: PersonaVector,
        layer: int | None = None,
        *,
        name: str | None = None,
        threshold: float | None = None,
        readout: str | None = None,
    ) -> MonitorSpec:
        """A spec for a persona vector at ``layer`` (default: its recommended layer)."""
        if layer is None:
            if vector.meta.recommended_layer is None:
                raise SteeringError("the vector records no recommended layer; pass a layer")
            layer = int(vector.meta.recommended_layer)
        return cls(name or vector.meta.trait, layer, vector.at(layer, readout).float(), threshold)


@dataclass(frozen=True)
class ConditionalSteering:
    """Steer against a trait only where it shows: ``h ← h − coef · v`` when ``h · v̂ > threshold``.

    Attributes:
        spec: what to measure and where (``spec.layer``); ``spec.vector`` is also what is
            subtracted (unnormalised, times ``coef``).
        threshold: projection (hidden units) above which a token is steered.
        coef: multiplier of the subtraction (``≥ 0`` pushes away from the trait).
        positions: which tokens may be steered: ``all`` (default), ``prompt`` or ``response``.
    """

    spec: MonitorSpec
    threshold: float
    coef: float
    positions: PositionMode = "all"

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold) or not math.isfinite(self.coef):
            raise SteeringError("conditional steering needs a finite threshold and coefficient")
        if self.positions not in POSITION_MODES:
            raise SteeringError(
                f"unknown positions {self.positions!r}; use {', '.join(POSITION_MODES)}"
            )


class Reading(NamedTuple):
    """One token's values: ``(position, is_prompt, {name: value})``."""

    position: int
    is_prompt: bool
    values: dict[str, float]


class Alert(NamedTuple):
    sequence: int
    token_index: int
    name: str
    value: float


@dataclass
class _Call:
    """One forward call in flight: its positions and the per-layer projections so far."""

    state: _CallState
    positions: torch.Tensor  # long [batch, seq]
    is_prompt: torch.Tensor  # bool [batch, seq]
    token_ids: torch.Tensor  # long [batch, seq] (-1 without input_ids)
    parts: dict[int, torch.Tensor] = field(default_factory=dict)  # layer → float32 [b, s, k]
    fired: dict[int, torch.Tensor] = field(default_factory=dict)  # conditional idx → bool [b, s]


@dataclass
class _LayerPlan:
    layer: int
    names: list[str]
    units: torch.Tensor  # float32 [hidden, k], columns v / ‖v‖
    conditionals: list[tuple[int, int, ConditionalSteering, torch.Tensor]]  # (idx, col, c, delta)


class TokenMonitor:
    """Record per-token projections on ``model`` until :meth:`remove` (or the ``with`` exit).

    Args:
        model: a transformers causal LM.
        specs: what to watch; names must be unique.
        on_alert: called as ``on_alert(sequence, token_index, name, value)`` for each generated
            token whose value is strictly above its spec's threshold.
        alert_prompt_last: also check the last prompt token of each sequence.
        conditional: steer-back rules (their specs are monitored too).
        log: a :class:`ReadingLog`; each finished batch of sequences (one ``generate`` call) is
            written in one transaction.
        stop_ids: tokens that end a sequence (default: the model's ``eos_token_id``).
        blocks_path: dotted path to the decoder blocks, when not found automatically.

    Attributes:
        readings: per sequence, a list of :class:`Reading` ``(position, is_prompt, values)``.
        token_ids: per sequence, the token id of each reading (``-1`` when called with embeds).
        alerts: every :class:`Alert` raised, in order.
        steered: per sequence, the positions where conditional steering changed the stream.
    """

    def __init__(
        self,
        model: nn.Module,
        specs: Sequence[MonitorSpec] | MonitorSpec,
        *,
        on_alert: AlertCallback | None = None,
        alert_prompt_last: bool = False,
        conditional: Sequence[ConditionalSteering] = (),
        log: ReadingLog | None = None,
        stop_ids: Iterable[int] | None = None,
        blocks_path: str | None = None,
    ) -> None:
        self.model = model
        self.specs = [specs] if isinstance(specs, MonitorSpec) else list(specs)
        self.conditional = list(conditional)
        for rule in self.conditional:
            known = next((s for s in self.specs if s.name == rule.spec.name), None)
            if known is None:
                self.specs.append(rule.spec)
            elif known is not rule.spec and (
                known.layer != rule.spec.layer or not torch.equal(known.vector, rule.spec.vector)
            ):
                raise SteeringError(f"two different monitor specs are named {known.name!r}")
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise SteeringError(f"monitor spec names must be unique, got {names}")
        if not self.specs:
            raise SteeringError("nothing to monitor; give at least one MonitorSpec")
        self.on_alert = on_alert
        self.alert_prompt_last = alert_prompt_last
        self.log = log
        self.stop_ids = set(_default_stop_ids(model) if stop_ids is None else stop_ids)
        self.readings: list[list[Reading]] = []
        self.token_ids: list[list[int]] = []
        self.times: list[list[float]] = []
        self.alerts: list[Alert] = []
        self.steered: list[list[int]] = []
        self._finished: list[bool] = []
        self._batch: tuple[int, int] | None = None  # (first sequence, batch size) of the latest
        self._flushed = 0
        self._call: _Call | None = None
        self._handles: list[RemovableHandle] = []

        blocks = find_blocks(model, blocks_path)
        for spec in self.specs:
            check_layer(spec.layer, len(blocks))
        param = next(blocks.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        hidden = _hidden_size(model)
        for spec in self.specs:
            if hidden is not None and spec.vector.shape[0] != hidden:
                raise SteeringError(
                    f"monitor vector {spec.name!r} has width {spec.vector.shape[0]} but the model "
                    f"has hidden size {hidden}; use a vector extracted from this model"
                )
        self._plans: list[_LayerPlan] = []
        for layer in sorted({s.layer for s in self.specs}):
            at_layer = [s for s in self.specs if s.layer == layer]
            units = torch.stack([s.vector.float() / s.vector.float().norm() for s in at_layer], 1)
            plan = _LayerPlan(layer, [s.name for s in at_layer], units.to(device), [])
            for index, rule in enumerate(self.conditional):
                if rule.spec.layer == layer:
                    column = plan.names.index(rule.spec.name)
                    delta = (rule.spec.vector.float() * rule.coef).to(device=device, dtype=dtype)
                    plan.conditionals.append((index, column, rule, delta))
            self._plans.append(plan)
        self._names = [name for plan in self._plans for name in plan.names]
        self._layer_of = {s.name: s.layer for s in self.specs}
        self._thresholds = [
            next(s for s in self.specs if s.name == n).threshold for n in self._names
        ]

        owner = _owner_of_blocks(model, blocks)
        try:
            self._handles.append(
                owner.register_forward_pre_hook(self._on_call_start, with_kwargs=True)
            )
            self._handles.append(owner.register_forward_hook(self._on_call_end))
            for plan in self._plans:
                if plan.layer == 0:
                    self._handles.append(
                        blocks[0].register_forward_pre_hook(
                            self._make_pre_hook(plan), with_kwargs=True
                        )
                    )
                else:
                    self._handles.append(
                        blocks[plan.layer - 1].register_forward_hook(self._make_hook(plan))
                    )
        except BaseException:
            self.remove()
            raise

    # ---- hooks ----------------------------------------------------------------------------
    def _on_call_start(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._call = None
        inputs = read_call(args, kwargs)
        if inputs is None:
            return
        real, past_len, attention = inputs.real, inputs.past_len, inputs.attention
        device = real.device
        if attention is not None:
            past_real = attention[:, : attention.shape[1] - real.shape[1]].long().sum(dim=1)
        else:
            past_real = torch.full((real.shape[0],), past_len, dtype=torch.long, device=device)
        is_prefill = past_len == 0
        prompt_lengths = _PROMPT_LENGTHS.get()
        rel = relative_positions(real)
        positions = past_real.to(device).unsqueeze(1) + rel
        if not is_prefill:
            is_prompt = torch.zeros_like(real)
        elif prompt_lengths is not None:
            is_prompt = real & (rel < prompt_lengths.to(device).unsqueeze(1))
        else:
            is_prompt = real
        token_ids = inputs.ids if inputs.ids is not None else torch.full_like(rel, -1)
        state = _CallState(real, is_prefill, prompt_lengths)
        self._call = _Call(state, positions, is_prompt, token_ids)

    def _measure(self, plan: _LayerPlan, hidden: torch.Tensor) -> torch.Tensor:
        call = self._call
        if call is None or call.state.real.shape != hidden.shape[:2]:
            self._call = None  # not a tracked forward (e.g. a block run alone): record nothing
            return hidden
        values = hidden.float() @ plan.units  # [b, s, k]
        call.parts[plan.layer] = values
        for index, column, rule, delta in plan.conditionals:
            fire = call.state.mask(rule.positions) & (values[..., column] > rule.threshold)
            call.fired[index] = fire
            hidden = torch.where(fire.unsqueeze(-1), hidden - delta, hidden)
        return hidden

    def _make_hook(self, plan: _LayerPlan) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = block_output_tensor(output)
            changed = self._measure(plan, hidden)
            return None if changed is hidden else replace_block_output(output, changed)

        return hook

    def _make_pre_hook(self, plan: _LayerPlan) -> Any:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            if "hidden_states" in kwargs:
                hidden = kwargs["hidden_states"]
                changed = self._measure(plan, hidden)
                return None if changed is hidden else (args, {**kwargs, "hidden_states": changed})
            hidden = args[0]
            changed = self._measure(plan, hidden)
            return None if changed is hidden else ((changed, *args[1:]), kwargs)

        return hook

    def _on_call_end(self, module: nn.Module, args: Any, output: Any) -> None:
        call, self._call = self._call, None
        if call is None or any(plan.layer not in call.parts for plan in self._plans):
            return
        columns = [call.parts[plan.layer] for plan in self._plans]
        extra = [call.token_ids, call.positions, call.state.real, call.is_prompt]
        extra += [call.fired[i] for i in range(len(self.conditional)) if i in call.fired]
        packed = torch.cat(
            [torch.cat(columns, dim=-1).double(), torch.stack(extra, dim=-1).double()], dim=-1
        )
        self._record(packed.cpu().tolist(), call.state.is_prefill, sorted(call.fired))

    # ---- bookkeeping (CPU, once per call) -------------------------------------------------
    def _record(self, rows: list[list[list[float]]], is_prefill: bool, fired: list[int]) -> None:
        batch = len(rows)
        if is_prefill or self._batch is None:
            self.flush()
            first = len(self.readings)
            for _ in range(batch):
                self.readings.append([])
                self.token_ids.append([])
                self.times.append([])
                self.steered.append([])
                self._finished.append(False)
            self._batch = (first, batch)
        first, size = self._batch
        if size != batch:
            return  # a decode call that does not continue the latest batch: nothing to attach to
        k = len(self._names)
        now = time.time()
        thresholds = self._thresholds
        for row_index, row in enumerate(rows):
            seq = first + row_index
            if self._finished[seq]:
                continue
            readings, ids, times = self.readings[seq], self.token_ids[seq], self.times[seq]
            last_prompt: Reading | None = None
            for token in row:
                if not token[k + 2]:
                    continue  # padding
                token_id = int(token[k])
                position = int(token[k + 1])
                is_prompt = bool(token[k + 3])
                values = dict(zip(self._names, token[:k], strict=True))
                reading = Reading(position, is_prompt, values)
                readings.append(reading)
                ids.append(token_id)
                times.append(now)
                if any(token[k + 4 + j] for j in range(len(fired))):
                    self.steered[seq].append(position)
                if is_prompt:
                    last_prompt = reading
                    continue
                self._check(seq, reading, thresholds)
                if token_id in self.stop_ids:
                    self._finished[seq] = True
                    break
            if self.alert_prompt_last and last_prompt is not None:
                # the last prompt token of a prefill (prompt-only or teacher-forced) call
                self._check(seq, last_prompt, thresholds)

    def _check(self, seq: int, reading: Reading, thresholds: list[float | None]) -> None:
        for (name, value), threshold in zip(reading.values.items(), thresholds, strict=True):
            if threshold is not None and value > threshold:
                alert = Alert(seq, reading.position, name, value)
                self.alerts.append(alert)
                if self.on_alert is not None:
                    self.on_alert(*alert)

    # ---- results --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Spec names, in the order of the layers they sit at."""
        return list(self._names)

    def layer_of(self, name: str) -> int:
        return self._layer_of[name]

    def series(self, sequence: int, name: str, *, prompt: bool | None = None) -> list[float]:
        """One sequence's values of ``name``; ``prompt=True/False`` keeps only prompt/generated."""
        return [
            r.values[name]
            for r in self.readings[sequence]
            if prompt is None or r.is_prompt == prompt
        ]

    def flush(self) -> None:
        """Write not-yet-logged sequences to the log (one transaction); called automatically."""
        if self.log is None or self._flushed >= len(self.readings):
            self._flushed = len(self.readings)
            return
        start = self._flushed
        self._flushed = len(self.readings)
        rows = []
        for seq in range(start, len(self.readings)):
            for reading, token_id, stamp in zip(
                self.readings[seq], self.token_ids[seq], self.times[seq], strict=True
            ):
                for name, value in reading.values.items():
                    rows.append(
                        (seq, reading.position, token_id, reading.is_prompt, name,
                         self._layer_of[name], value, stamp)
                    )  # fmt: skip
        self.log.write(rows)

    # ---- teardown -------------------------------------------------------------------------
    def remove(self) -> None:
        """Remove every hook and flush the log; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._call = None
        self.flush()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> TokenMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def start_monitor(
    model: nn.Module, specs: Sequence[MonitorSpec] | MonitorSpec, **options: Any
) -> TokenMonitor:
    """Start monitoring ``model``; returns the monitor, whose ``remove()`` stops it.

    ``options`` are those of :class:`TokenMonitor`.
    """
    return TokenMonitor(model, specs, **options)


def _default_stop_ids(model: nn.Module) -> list[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        return [eos]
    if isinstance(eos, list | tuple):
        return [int(i) for i in eos]
    return []


def _hidden_size(model: nn.Module) -> int | None:
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        embeddings = getter()
    except (NotImplementedError, AttributeError):
        return None
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[1]) if isinstance(weight, torch.Tensor) else None


# ---- SQLite log ---------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    session TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    token_index INTEGER NOT NULL,
    token_id INTEGER NOT NULL,
    is_prompt INTEGER NOT NULL,
    name TEXT NOT NULL,
    layer INTEGER NOT NULL,
    value REAL NOT NULL,
    timestamp REAL NOT NULL
)
"""


class LogRow(NamedTuple):
    session: str
    sequence: int
    token_index: int
    token_id: int
    is_prompt: bool
    name: str
    layer: int
    value: float
    timestamp: float


class ReadingLog:
    """Readings appended to a SQLite file (table ``readings``), one transaction per batch.

    Args:
        path: the database file (created with its table when missing).
        session: id of this run's rows (default: a fresh random hex id).
    """

    def __init__(self, path: str | Path, *, session: str | None = None) -> None:
        self.path = Path(path)
        self.session = session or uuid.uuid4().hex
        if self.path.parent and not self.path.parent.exists():
            raise PersonavecError(f"log directory {self.path.parent} does not exist; create it")
        try:
            with sqlite3.connect(self.path) as db:
                db.execute(_SCHEMA)
                db.execute(
                    "CREATE INDEX IF NOT EXISTS readings_session ON readings (session, sequence)"
                )
            db.close()
        except sqlite3.DatabaseError as exc:
            raise PersonavecError(
                f"cannot use {self.path} as a log: {exc}; pick another file"
            ) from None

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Append ``(sequence, token_index, token_id, is_prompt, name, layer, value, time)``."""
        if not rows:
            return
        db = sqlite3.connect(self.path)
        try:
            with db:
                db.executemany(
                    "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(self.session, *row) for row in rows],
                )
        finally:
            db.close()


def read_log(path: str | Path, *, session: str | None = None) -> list[LogRow]:
    """Rows of a :class:`ReadingLog` file, ordered by session, sequence, token, name."""
    source = Path(path)
    if not source.is_file():
        raise PersonavecError(f"log file not found: {source}; check the path")
    db = sqlite3.connect(source)
    try:
        query = "SELECT * FROM readings"
        params: tuple[Any, ...] = ()
        if session is not None:
            query += " WHERE session = ?"
            params = (session,)
        query += " ORDER BY session, sequence, token_index, name"
        rows = db.execute(query, params).fetchall()
    except sqlite3.DatabaseError as exc:
        raise PersonavecError(f"cannot read {source} as a monitor log: {exc}") from None
    finally:
        db.close()
    return [
        LogRow(s, int(q), int(t), int(i), bool(p), n, int(layer), float(v), float(ts))
        for s, q, t, i, p, n, layer, v, ts in rows
    ]


# ---- generation with monitoring (the library side of ``personavec monitor``) ---------------


@dataclass
class MonitoredAnswer:
    """One prompt's answer and its readings.

    Attributes:
        prompt_ids: the chat-formatted prompt's token ids.
        response_ids: generated ids, without the stop token.
        text: decoded response.
        readings: the sequence's readings (prompt tokens, then generated tokens).
        alerts: alerts of this sequence.
        steered: positions where conditional steering changed the stream.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    readings: list[Reading]
    alerts: list[Alert]
    steered: list[int]


def generate_monitored(
    loaded: Any,
    prompts: Sequence[Sequence[Any]],
    specs: Sequence[MonitorSpec],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    conditional: Sequence[ConditionalSteering] = (),
    on_alert: AlertCallback | None = None,
    alert_prompt_last: bool = False,
    log: ReadingLog | None = None,
    streamer: Any = None,
) -> list[MonitoredAnswer]:
    """Answer chats (lists of messages) in one left-padded batch, in order, with monitoring on.

    Greedy when ``temperature == 0``; otherwise each row samples from its own seeded stream (as
    :class:`personavec.engines.generation.HFEngine`).
    Sequence ``i`` of the monitor is ``prompts[i]``.
    ``streamer`` is a transformers streamer; if it has ``attach(monitor)``, it is given the
    :class:`TokenMonitor` first, so it can show readings live (see :class:`LiveMeter`).
    """
    from transformers import LogitsProcessorList

    from personavec.core.capture import left_pad
    from personavec.core.models import encode_prompt
    from personavec.engines.generation import (
        SamplingConfig,
        _GumbelSampler,
        neutral_generation_config,
        sample_seed,
        stop_token_ids,
    )

    config = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    tokenizer = loaded.tokenizer
    prompt_ids = [encode_prompt(tokenizer, list(messages)) for messages in prompts]
    stops = stop_token_ids(loaded)
    pad = tokenizer.pad_token_id
    pad_id = int(pad) if pad is not None else stops[0]
    ids, attention, _ = left_pad(prompt_ids, pad_id)
    processors = LogitsProcessorList()
    if not config.greedy:
        seeds = [sample_seed(seed, f"index:{i}", 0) for i in range(len(prompt_ids))]
        processors.append(_GumbelSampler(seeds, temperature, top_p))
    generation_config = neutral_generation_config(max_new_tokens, stops, pad_id)
    monitor = TokenMonitor(
        loaded.model,
        specs,
        on_alert=on_alert,
        alert_prompt_last=alert_prompt_last,
        conditional=conditional,
        log=log,
        stop_ids=stops,
    )
    if streamer is not None and hasattr(streamer, "attach"):
        streamer.attach(monitor)  # live displays read the monitor as tokens arrive
    with monitor, torch.no_grad():
        output = loaded.model.generate(
            input_ids=ids.to(loaded.device),
            attention_mask=attention.to(loaded.device),
            generation_config=generation_config,
            logits_processor=processors,
            streamer=streamer,
        )
    width = ids.shape[1]
    answers = []
    stop_set = set(stops)
    for row, tokens in enumerate(output[:, width:].tolist()):
        cut = next((k for k, t in enumerate(tokens) if t in stop_set), len(tokens))
        response = [int(t) for t in tokens[:cut]]
        answers.append(
            MonitoredAnswer(
                prompt_ids=list(prompt_ids[row]),
                response_ids=response,
                text=str(tokenizer.decode(response, skip_special_tokens=True)),
                readings=monitor.readings[row],
                alerts=[a for a in monitor.alerts if a.sequence == row],
                steered=monitor.steered[row],
            )
        )
    return answers


class LiveMeter:
    """A transformers streamer that shows one answer growing with its projection meter.

    After each generated token it renders the text so far and, per monitored vector, a bar of the
    latest reading (the most recent token fed to the model, so one token behind the text). Every
    rendered value is kept in :attr:`history` as ``(name, value)`` per step.
    """

    def __init__(self, tokenizer: Any, console: Any = None, *, width: int = 30) -> None:
        from rich.console import Console

        self.tokenizer = tokenizer
        self.console = console or Console()
        self.width = width
        self.monitor: TokenMonitor | None = None
        self.token_ids: list[int] = []
        self.history: list[dict[str, float]] = []
        self._prompt_seen = False
        self._live: Any = None
        self._low: dict[str, float] = {}
        self._high: dict[str, float] = {}

    def attach(self, monitor: TokenMonitor) -> None:
        self.monitor = monitor

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first sends the prompt
            self._prompt_seen = True
            return
        self.token_ids.extend(int(t) for t in value.reshape(-1)[:1].tolist())
        latest: dict[str, float] = {}
        if self.monitor is not None and self.monitor.readings and self.monitor.readings[0]:
            latest = dict(self.monitor.readings[0][-1].values)
        self.history.append(latest)
        for name, v in latest.items():
            self._low[name] = min(self._low.get(name, v), v)
            self._high[name] = max(self._high.get(name, v), v)
        self._render(latest)

    def _render(self, latest: dict[str, float]) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        text = Text(str(self.tokenizer.decode(self.token_ids, skip_special_tokens=True)))
        lines: list[Any] = [text]
        for name, v in latest.items():
            low, high = self._low[name], self._high[name]
            span = (high - low) or 1.0
            filled = round(self.width * (v - low) / span)
            bar = "█" * filled + "·" * (self.width - filled)
            lines.append(Text(f"{name:>14} {bar} {v:+8.2f}  (range {low:+.2f}..{high:+.2f})"))
        if self._live is None:
            self._live = Live(Group(*lines), console=self.console, transient=True)
            self._live.start()
        else:
            self._live.update(Group(*lines))

    def end(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

"""Generation with monitoring: the library side of ``personavec monitor``.

Batched generation itself is the HF engine's (:meth:`HFEngine.generate_batch`: left padding,
neutral generation config, per-row seeded sampling, stop tokens); this module only wraps it in a
:class:`~personavec.monitor.monitor.TokenMonitor` and gathers each answer's readings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from personavec.core.models import LoadedModel, Message, encode_prompt
from personavec.engines.generation import HFEngine, SamplingConfig
from personavec.engines.sampling import sample_seed
from personavec.monitor.log import ReadingLog
from personavec.monitor.monitor import (
    Alert,
    AlertCallback,
    ConditionalSteering,
    MonitorSpec,
    Reading,
    TokenMonitor,
)


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
    loaded: LoadedModel,
    prompts: Sequence[Sequence[Message]],
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

    Greedy when ``temperature == 0``; otherwise row ``i`` samples from its own seeded stream
    (``sample_seed(seed, "index:i", 0)``, as :class:`~personavec.engines.generation.HFEngine`).
    Sequence ``i`` of the monitor is ``prompts[i]``. ``streamer`` is a transformers streamer; if
    it has ``attach(monitor)``, it is given the :class:`TokenMonitor` first, so it can show
    readings live (see :class:`~personavec.monitor.live.LiveMeter`).
    """
    config = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    engine = HFEngine(loaded)
    prompt_ids = [encode_prompt(loaded.tokenizer, list(messages)) for messages in prompts]
    seeds = [sample_seed(seed, f"index:{i}", 0) for i in range(len(prompt_ids))]
    monitor = TokenMonitor(
        loaded.model,
        specs,
        on_alert=on_alert,
        alert_prompt_last=alert_prompt_last,
        conditional=conditional,
        log=log,
        stop_ids=engine.stop_ids,
    )
    if streamer is not None and hasattr(streamer, "attach"):
        streamer.attach(monitor)  # live displays read the monitor as tokens arrive
    with monitor:
        outputs = engine.generate_batch(prompt_ids, config, seeds=seeds, streamer=streamer)
    return [
        MonitoredAnswer(
            prompt_ids=list(prompt_ids[row]),
            response_ids=response,
            text=str(loaded.tokenizer.decode(response, skip_special_tokens=True)),
            readings=monitor.readings[row],
            alerts=[a for a in monitor.alerts if a.sequence == row],
            steered=monitor.steered[row],
        )
        for row, (response, _) in enumerate(outputs)
    ]

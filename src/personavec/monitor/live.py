"""``LiveMeter``: a terminal view of one answer growing, with a projection meter per vector."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from personavec.monitor.monitor import TokenMonitor


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

"""The text grammars of steering settings (pure parsing; nothing is loaded here).

* Layers (:func:`parse_layers`): ``12``, ``8,12,16``, ``8-16``, ``8-20:4`` (every 4th layer from 8
  to 20) and comma-separated combinations → sorted distinct layers. Valid layers are ``0..n``
  (0 = embedding output, ``L`` = output of block ``L``), the same for every command.
* Spec strings (:func:`split_spec`): ``FILE[:layer[:coef[:positions[:op]]]]``; for op ``cap``
  the coef part is the threshold.
* Cap thresholds (:func:`parse_threshold`): a number (a raw projection ``h·v̂``) or ``pNN``, the
  NN-th percentile of the projections seen at extraction.

Every error is a one-line :class:`~personavec.errors.SteeringError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from personavec.core.layers import check_layer
from personavec.core.positions import POSITION_MODES
from personavec.errors import SteeringError

SPEC_HELP = "FILE[:layer[:coef[:positions[:op]]]], e.g. evil.safetensors:12:4 or v.safetensors:8-16"
SPEC_OPS = ("add", "ablate", "cap")
_LAYER_PART = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")
_N = TypeVar("_N", int, float)
_PERCENTILE = re.compile(r"[pP](\d+(?:\.\d+)?)")


def split_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``: comma-separated items, stripped, empties dropped
    (``None`` → ``[]``). The one comma-list reader of every option."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def parse_numbers(text: str, kind: Callable[[str], _N], flag: str, example: str) -> list[_N]:
    """Comma-separated finite numbers (``kind`` ``int`` or ``float``) in the order given, or a
    one-line error naming ``flag`` with an ``example``."""
    try:
        values = [kind(part) for part in split_list(text)]
    except ValueError:
        raise SteeringError(f"cannot read {flag} {text!r}; write e.g. {example}") from None
    if any(not math.isfinite(v) for v in values):
        raise SteeringError(f"{flag} must be finite numbers, got {text!r}")
    return values


def parse_layers(text: str, n_layers: int | None = None) -> list[int]:
    """``"12"``, ``"8,12,16"``, ``"8-16"``, ``"8-20:4"`` (and combinations) → sorted distinct
    layers; with ``n_layers``, each must be in ``0..n_layers``."""
    hint = "write e.g. 12, 8,12,16, 8-16 or 8-20:4"
    layers: set[int] = set()
    for raw in str(text).split(","):
        part = raw.strip()
        match = _LAYER_PART.fullmatch(part)
        if match is None:
            if re.fullmatch(r"-\d+.*", part):
                raise SteeringError(f"layers must be >= 0, got {text!r}; {hint}")
            raise SteeringError(f"cannot read layers {text!r}; {hint}")
        start, end, step = match.groups()
        first, last = int(start), int(end) if end is not None else int(start)
        stride = int(step) if step is not None else 1
        if last < first or stride < 1:
            raise SteeringError(f"cannot read layers {text!r} (empty range {part!r}); {hint}")
        layers.update(range(first, last + 1, stride))
    out = sorted(layers)
    if n_layers is not None:
        for layer in out:
            check_layer(layer, n_layers)
    return out


def parse_coef(text: str) -> float:
    """A finite number, or a one-line error."""
    try:
        value = float(text)
    except ValueError:
        message = f"cannot read coefficient {text!r}; write a number, e.g. 4 or -0.5"
        raise SteeringError(message) from None
    if not math.isfinite(value):
        raise SteeringError(f"coefficient {text!r} is not a finite number")
    return value


@dataclass(frozen=True)
class Percentile:
    """A cap threshold given as the ``q``-th percentile (0..100) of extraction projections."""

    q: float


def parse_threshold(text: str) -> float | Percentile:
    """``"2.5"`` → 2.5; ``"p95"`` → ``Percentile(95)``."""
    value = text.strip()
    match = _PERCENTILE.fullmatch(value)
    if match is not None:
        q = float(match.group(1))
        if not 0 <= q <= 100:
            raise SteeringError(f"percentile {text!r} is outside p0..p100")
        return Percentile(q)
    try:
        number = float(value)
    except ValueError:
        raise SteeringError(
            f"cannot read threshold {text!r}; write a number or a percentile like p95"
        ) from None
    if not math.isfinite(number):
        raise SteeringError(f"threshold {text!r} is not a finite number")
    return number


@dataclass(frozen=True)
class SpecParts:
    """The parts of a spec string; ``None`` / empty text: not given."""

    path: Path
    layers: list[int] | None
    value: str
    """The coef part as written (a coefficient, or for ``cap`` the threshold)."""
    positions: str | None
    op: str | None


def _split_path(text: str) -> tuple[str, list[str]]:
    """Split ``FILE:rest…``; a path that itself holds ``:`` (``C:\\v.safetensors``) is kept whole
    when that file exists."""
    parts = text.split(":")
    for k in range(len(parts), 1, -1):
        candidate = ":".join(parts[:k])
        if Path(candidate).is_file():
            return candidate, parts[k:]
    return parts[0], parts[1:]


def split_spec(text: str) -> SpecParts:
    """Check and split ``FILE[:layer[:coef[:positions[:op]]]]`` (the coef is checked too,
    unless the op is ``cap``)."""
    raw = text.strip()
    if not raw:
        raise SteeringError(f"empty steering spec; write {SPEC_HELP}")
    path, rest = _split_path(raw)
    if not path.strip():
        raise SteeringError(f"steering spec {text!r} names no vector file; write {SPEC_HELP}")
    if len(rest) > 4:
        raise SteeringError(f"steering spec {text!r} has too many ':' parts; write {SPEC_HELP}")
    layer_text, value, positions, op = [p.strip() for p in rest] + [""] * (4 - len(rest))
    if op and op not in SPEC_OPS:
        raise SteeringError(f"unknown operator {op!r} in {text!r}; use add, ablate or cap")
    if positions and positions not in POSITION_MODES:
        raise SteeringError(
            f"unknown positions {positions!r} in {text!r}; use {', '.join(POSITION_MODES)}"
        )
    layers = parse_layers(layer_text) if layer_text else None
    if value and op != "cap":
        parse_coef(value)
    return SpecParts(Path(path.strip()), layers, value, positions or None, op or None)


def format_layers(layers: Sequence[int]) -> str:
    """Layers as the grammar writes them: ``8-16`` for a run of three or more, else ``8,12``."""
    if len(layers) > 2 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(x) for x in layers)

"""Scoring one batch of samples: projections of the dataset's and the model's own responses.

For a sample (prompt x, dataset response y) and a persona vector v at layer L (v̂ = v/‖v‖):

* ``response``    = ā(x, y) · v̂, the response-average activation of the dataset's response;
* ``own``         = ā(x, y_own) · v̂, the same for the model's own response y_own (greedy
  generation, or a user-named column);
* ``delta``       = response − own, the projection difference ΔP (full mode only);
* ``prompt_last`` = h_last(x) · v̂, the last prompt token (the token that predicts the answer);
* ``delta_prompt`` = response − prompt_last, the cheap ΔP that needs no generation.

Both sides are tokenised from text the same way, so a dataset response equal to the model's own
response text has ΔP = 0 exactly. This module is shared by the in-process and the Ray engines,
so both compute the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from personavec.core.capture import Example, capture
from personavec.core.models import LoadedModel
from personavec.core.projection import project
from personavec.core.vector import PersonaVector
from personavec.engines.generation import (
    GenerationEngine,
    GenerationRequest,
    HFEngine,
    SamplingConfig,
)
from personavec.errors import PersonavecError
from personavec.screening.data import Sample

Mode = Literal["full", "prompt"]
MODES: tuple[str, ...] = ("full", "prompt")
_READOUTS = ("response_avg", "prompt_last")


@dataclass(frozen=True)
class Target:
    """One persona vector to score against: its column prefix, layer and unit direction."""

    name: str
    layer: int
    vector: torch.Tensor  # float32 [hidden], the persona vector at ``layer``

    def column(self, kind: str) -> str:
        """Column name, e.g. ``evil.L19.delta``."""
        return f"{self.name}.L{self.layer}.{kind}"


def make_targets(vectors: Sequence[PersonaVector], layer: int | None = None) -> list[Target]:
    """Targets for vectors at ``layer`` (default: each vector's recommended layer)."""
    targets: list[Target] = []
    for vector in vectors:
        chosen = vector.layer_or_recommended(layer)
        target = Target(vector.meta.trait, chosen, vector.direction(chosen).float())
        if any(t.column("") == target.column("") for t in targets):
            raise PersonavecError(f"vector {target.name!r} at layer {chosen} is given twice")
        targets.append(target)
    if not targets:
        raise PersonavecError("no persona vectors given; pass at least one --vector")
    return targets


@dataclass(frozen=True)
class ScoreSettings:
    """How samples are scored.

    Attributes:
        mode: ``full`` (generate or read the model's own response; ΔP) or ``prompt`` (the
            last-prompt-token approximation only; no generation).
        max_new_tokens: tokens generated for the model's own response (greedy).
        batch_size: samples per generation batch; capture runs twice as many pairs per pass.
    """

    mode: Mode = "full"
    max_new_tokens: int = 256
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PersonavecError(f"unknown screening mode {self.mode!r}; use full or prompt")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise PersonavecError("max_new_tokens and batch_size must be at least 1")

    def sampling(self) -> SamplingConfig:
        """Greedy decoding: the model's own response is its most likely answer."""
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens, temperature=0.0, batch_size=self.batch_size
        )


@dataclass
class Timing:
    """Seconds spent generating and capturing (accumulated over batches)."""

    generation_s: float = 0.0
    capture_s: float = 0.0

    def add(self, other: Timing) -> None:
        self.generation_s += other.generation_s
        self.capture_s += other.capture_s


def own_responses(
    engine: GenerationEngine, samples: Sequence[Sample], settings: ScoreSettings
) -> list[str]:
    """The model's own (greedy) response text to each sample's prompt; a column wins."""
    missing = [s for s in samples if s.own_response is None]
    generated: dict[int, str] = {}
    if missing:
        requests = [GenerationRequest(list(s.example.messages), id=s.id) for s in missing]
        outputs = engine.generate(requests, settings.sampling())
        generated = {s.index: g.response_text for s, g in zip(missing, outputs, strict=True)}
    return [s.own_response if s.own_response is not None else generated[s.index] for s in samples]


def score_batch(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    targets: Sequence[Target],
    settings: ScoreSettings,
    engine: GenerationEngine | None = None,
) -> tuple[list[dict[str, Any]], Timing]:
    """Score rows for ``samples`` (input order) and the time spent; see the module docstring."""
    timing = Timing()
    examples = [s.example for s in samples]
    own: list[str] = []
    if settings.mode == "full":
        started = time.perf_counter()
        own = own_responses(engine or HFEngine(loaded), samples, settings)
        timing.generation_s = time.perf_counter() - started
        pairs = zip(samples, own, strict=True)
        examples += [Example(s.example.messages, text) for s, text in pairs]
    started = time.perf_counter()
    layers = sorted({t.layer for t in targets})
    result = capture(
        loaded,
        examples,
        layers=layers,
        readouts=_READOUTS,
        keep_per_example=True,
        batch_size=2 * settings.batch_size,
    )
    timing.capture_s = time.perf_counter() - started
    assert result.per_example is not None
    n = len(samples)
    rows: list[dict[str, Any]] = [{"index": s.index, "id": s.id} for s in samples]
    for target in targets:
        position = result.layers.index(target.layer)
        avg = project(result.per_example["response_avg"][:, position], target.vector)
        last = project(result.per_example["prompt_last"][:n, position], target.vector)
        for i, row in enumerate(rows):
            response, prompt_last = float(avg[i]), float(last[i])
            row[target.column("response")] = response
            row[target.column("prompt_last")] = prompt_last
            row[target.column("delta_prompt")] = response - prompt_last
            if settings.mode == "full":
                # An empty own answer has no response average: both columns are null.
                own_value = float(avg[n + i]) if own[i] != "" else None
                row[target.column("own")] = own_value
                row[target.column("delta")] = None if own_value is None else response - own_value
    if settings.mode == "full":
        for row, text in zip(rows, own, strict=True):
            row["own_response"] = text
    return rows, timing


def score_column(target: Target, mode: Mode) -> str:
    """The column a mode's ΔP lives in: ``delta`` (full) or ``delta_prompt`` (prompt)."""
    return target.column("delta" if mode == "full" else "delta_prompt")

"""Trait geometry: how persona vectors relate to each other, and whether they predict each other.

Two views, both computed on vectors extracted from the same model:

* **Cosine similarity** between every pair of traits' vectors at every layer
  (:func:`cosine_matrix`). Related traits point in related directions; the paper notes that
  traits shift together under finetuning, and the cosines show which ones are entangled.
* **Cross-prediction** (:func:`cross_prediction`): for each extraction run directory, the Pearson
  r between every vector's projection of that run's responses and the judged trait score of the
  run's own trait. The diagonal (a vector against its own trait's judgments) should be high; large
  off-diagonal values mean one trait's direction also tracks another trait's expression.

:mod:`personavec.pipeline.geometry_report` writes the plots, ``geometry.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from personavec.core.capture import Example, capture
from personavec.core.layers import check_layer
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.projection import project
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.metrics.stats import pearson
from personavec.store import read_jsonl

DEFAULT_READOUT = "response_avg"


# ---- names and compatibility ----------------------------------------------------------------
def trait_names(vectors: Sequence[PersonaVector]) -> list[str]:
    """One unique label per vector: its trait, with ``#k`` appended when a trait repeats."""
    totals = Counter(v.meta.trait for v in vectors)
    seen: Counter[str] = Counter()
    names = []
    for vector in vectors:
        trait = vector.meta.trait
        seen[trait] += 1
        names.append(f"{trait}#{seen[trait]}" if totals[trait] > 1 else trait)
    return names


def _label(vector: PersonaVector) -> str:
    return str(vector.path) if vector.path is not None else repr(vector.meta.trait)


def check_same_model(vectors: Sequence[PersonaVector], readout: str = DEFAULT_READOUT) -> None:
    """Raise a one-line :class:`PersonavecError` unless all vectors share model and readout."""
    if not vectors:
        raise PersonavecError("no persona vectors given; pass at least one vector file")
    first = vectors[0]
    for vector in vectors:
        if readout not in vector.vectors:
            raise PersonavecError(
                f"{_label(vector)} has no readout {readout!r} (it has "
                f"{', '.join(sorted(vector.vectors))}); pick a readout every vector has"
            )
    for vector in vectors[1:]:
        for what, mine, theirs in (
            ("hidden size", vector.meta.hidden_size, first.meta.hidden_size),
            ("layer count", vector.meta.n_layers, first.meta.n_layers),
            ("model fingerprint", vector.meta.model_fingerprint, first.meta.model_fingerprint),
        ):
            if mine != theirs:
                raise PersonavecError(
                    f"{_label(vector)} has {what} {mine} ({vector.meta.model_id}) but "
                    f"{_label(first)} has {theirs} ({first.meta.model_id}); compare vectors "
                    "extracted from the same model"
                )


def cosine_matrix(
    vectors: Sequence[PersonaVector], readout: str = DEFAULT_READOUT
) -> tuple[list[str], torch.Tensor]:
    """Cosine similarity of every pair of vectors at every layer.

    Returns ``(names, cos)`` with ``cos`` float64 ``[T, T, n_layers + 1]``; ``cos[i, j, l]`` is
    the cosine of vector ``i`` and vector ``j`` at layer ``l``. Entries involving a zero vector
    are NaN. ``names`` are the traits, disambiguated with ``#k`` when a trait repeats.
    """
    check_same_model(vectors, readout)
    stacked = torch.stack([v.readout(readout).to(torch.float64) for v in vectors])  # [T, L, d]
    norms = stacked.norm(dim=-1)  # [T, L]
    dots = torch.einsum("ild,jld->ijl", stacked, stacked)
    denom = norms.unsqueeze(1) * norms.unsqueeze(0)
    cos = torch.where(denom > 0, dots / denom.clamp(min=1e-300), torch.nan)
    cos = cos.clamp(-1.0, 1.0)  # NaN stays NaN
    return trait_names(vectors), cos


def default_layer(vectors: Sequence[PersonaVector]) -> int:
    """The most common recommended layer (ties: the smallest), else the middle layer."""
    recommended = Counter(
        int(v.meta.recommended_layer) for v in vectors if v.meta.recommended_layer is not None
    )
    if recommended:
        top = max(recommended.values())
        return min(layer for layer, count in recommended.items() if count == top)
    return (vectors[0].meta.n_layers + 1) // 2


# ---- cross-prediction -----------------------------------------------------------------------
@dataclass
class RunData:
    """The judged rollouts of one extraction run directory."""

    path: Path
    name: str
    trait: str
    examples: list[Example]
    scores: list[float]
    skipped: int


@dataclass
class CrossPrediction:
    """Pearson r between vector projections and judged scores, ``[runs × vectors]``.

    Attributes:
        runs: run directory labels (row order); run_traits: each run's trait.
        vectors: vector labels (column order); layer: where the projections were taken.
        r: ``r[i][j]`` = Pearson r of vector ``j``'s projection and run ``i``'s judged scores
            (NaN with fewer than 3 rows or no variance).
        n: scored rows used per run; skipped: rows left out (no score or empty response).
        projections: ``projections[i][j]`` = run ``i``'s projections onto vector ``j``.
        scores: each run's judged scores, in row order.
    """

    runs: list[str]
    run_traits: list[str]
    vectors: list[str]
    layer: int
    readout: str
    r: list[list[float]]
    n: list[int]
    skipped: list[int]
    projections: list[list[list[float]]]
    scores: list[list[float]]

    def own(self, run: int, vector_traits: Sequence[str]) -> list[bool]:
        """Which columns are the run's own trait (the 'diagonal')."""
        return [t == self.run_traits[run] for t in vector_traits]


def read_run(run_dir: str | Path) -> RunData:
    """Scored rollouts of an extraction run (rows without a trait score or response skipped)."""
    path = Path(run_dir)
    scored = path / "scored.jsonl"
    if not path.is_dir():
        raise PersonavecError(f"run directory not found: {path}; pass a `personavec extract` run")
    if not scored.is_file():
        raise PersonavecError(
            f"{path} has no scored.jsonl; finish the extraction (judging) there first"
        )
    trait = path.name
    config_path = path / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PersonavecError(f"{config_path} is not valid JSON; repair or remove it") from None
        raw = config.get("trait") if isinstance(config, dict) else None
        if isinstance(raw, str) and raw:
            trait = Path(raw).stem if raw.endswith(".json") else raw
    examples: list[Example] = []
    scores: list[float] = []
    skipped = 0
    for number, row in enumerate(read_jsonl(scored), start=1):
        if not isinstance(row, dict) or "question" not in row:
            raise PersonavecError(
                f"{scored}:{number} is not a scored rollout (no 'question'); "
                "pass a run directory written by `personavec extract`"
            )
        score = row.get("trait_score")
        ids = row.get("response_token_ids")
        response = row.get("response") or ""
        if score is None or (ids is not None and len(ids) == 0) or (ids is None and not response):
            skipped += 1
            continue
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise PersonavecError(
                f"{scored}:{number} has a non-numeric trait_score {score!r}; repair that line"
            ) from None
        if not math.isfinite(value):
            skipped += 1
            continue
        messages = chat_messages(str(row["question"]), system=row.get("system"))
        examples.append(Example(messages, str(response), response_ids=ids))
        scores.append(value)
    if not scores:
        raise PersonavecError(f"{scored} has no judged rollouts; finish judging that run first")
    return RunData(path, path.name, trait, examples, scores, skipped)


def cross_prediction(
    loaded: LoadedModel,
    run_dirs: Sequence[str | Path | RunData],
    vectors: Sequence[PersonaVector],
    layer: int,
    *,
    readout: str = DEFAULT_READOUT,
    force: bool = False,
    batch_size: int = 8,
) -> CrossPrediction:
    """Pearson r of every vector's projection against every run's judged trait scores.

    Each run's judged rollouts are captured once (``readout`` at ``layer``, using the stored
    response token ids when present) and projected onto each vector's direction at ``layer``.
    """
    check_same_model(vectors, readout)
    check_layer(layer, vectors[0].meta.n_layers)
    for vector in vectors:
        vector.check_compatible(loaded.model, force=force)
        if float(vector.at(layer, readout).norm()) == 0:
            raise PersonavecError(
                f"{_label(vector)} is zero at layer {layer}; pick another --layer"
            )
    runs = [r if isinstance(r, RunData) else read_run(r) for r in run_dirs]
    if not runs:
        raise PersonavecError("no run directories given; pass at least one extraction run")
    names = trait_names(vectors)
    matrix: list[list[float]] = []
    projections: list[list[list[float]]] = []
    for run in runs:
        captured = capture(
            loaded,
            run.examples,
            layers=[layer],
            readouts=[readout],
            keep_per_example=True,
            batch_size=batch_size,
        )
        assert captured.per_example is not None
        hidden = captured.per_example[readout][:, 0]  # [N, d]
        row: list[float] = []
        run_projections: list[list[float]] = []
        for vector in vectors:
            values = project(hidden, vector.at(layer, readout)).tolist()
            run_projections.append(values)
            row.append(pearson(values, run.scores))
        matrix.append(row)
        projections.append(run_projections)
    return CrossPrediction(
        runs=[r.name for r in runs],
        run_traits=[r.trait for r in runs],
        vectors=names,
        layer=layer,
        readout=readout,
        r=matrix,
        n=[len(r.scores) for r in runs],
        skipped=[r.skipped for r in runs],
        projections=projections,
        scores=[r.scores for r in runs],
    )


def pairs(names: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` with ``i < j``."""
    return [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]

"""``personavec extract``: from a trait file to a persona vector, with no hand work.

Stages, each resumable from the run directory:

1. **Rollouts.** For every instruction pair ``i`` and extraction question ``q``, answer ``q`` under
   the eliciting system prompt (``pos``) and the suppressing one (``neg``), ``samples`` times each.
   Appended to ``rollouts.jsonl`` batch by batch; a re-run generates only what is missing (each
   sample has its own seed, so the missing ones come out as they would have).
2. **Judging.** Trait expression and coherence, 0-100, for every rollout, through the SQLite cache
   ``judgments.sqlite``.
3. **Filtering.** A pair ``(i, q, sample)`` is kept when pos trait ≥ ``pos_threshold``, neg trait
   < ``neg_threshold`` and both coherence ≥ ``coherence_threshold`` (the paper's rule, 50/50/50).
4. **Capture.** ``response_avg``, ``prompt_avg`` and ``prompt_last`` at every layer; the vector per
   layer is mean(kept pos) − mean(kept neg), unnormalised.
5. **Report.** Per-layer held-out separation (2-fold: a vector from half the pairs scores the other
   half) as AUROC and Cohen's d, a suggested layer, plots and ``report.md``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from personavec.core.capture import Example, capture
from personavec.core.layers import LAYER_CONVENTION
from personavec.core.models import LoadedModel, chat_messages, load_model
from personavec.core.vector import (
    PersonaVector,
    VectorMetadata,
    config_fingerprint,
    projection_percentiles,
)
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import PersonavecError
from personavec.judges.base import Judge, JudgeItem
from personavec.judges.cache import CachedJudge, JudgmentCache
from personavec.judges.factory import make_judge
from personavec.progress import stage
from personavec.store import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    check_run_identity,
    read_jsonl,
)
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec

Polarity = Literal["pos", "neg"]

# Settings whose change makes earlier rollouts or judgments invalid for this run directory.
_RUN_IDENTITY = (
    "trait",
    "model",
    "n_instructions",
    "n_questions",
    "samples",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
)


class ExtractConfig(BaseModel):
    """Everything that defines an extraction run (saved as ``config.json``)."""

    model_config = ConfigDict(extra="forbid")

    trait: str = Field(description="Shipped trait name or path to a trait JSON file.")
    model: str = "smollm2"
    judge: str = "contrast"
    coherence_judge: str | None = Field(
        default=None, description="Default: 'heuristic' offline, the trait judge for LLM judges."
    )
    n_instructions: int | None = Field(default=None, ge=1, description="Default: all pairs.")
    n_questions: int | None = Field(default=None, ge=1, description="Default: all questions.")
    samples: int = Field(default=1, ge=1, description="Samples per (instruction, question).")
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    batch_size: int = Field(default=16, ge=1)
    pos_threshold: float = 50.0
    neg_threshold: float = 50.0
    coherence_threshold: float = 50.0
    min_pairs: int = Field(default=4, ge=2)
    device: str | None = None
    dtype: str | None = None

    @classmethod
    def paper_scale(cls, **overrides: Any) -> ExtractConfig:
        """The paper's settings: 10 samples per question, up to 1000 new tokens."""
        return cls(**{"samples": 10, "max_new_tokens": 1000, **overrides})

    def resolved_coherence_judge(self) -> str:
        if self.coherence_judge:
            return self.coherence_judge
        return self.judge if ":" in self.judge else "heuristic"


@dataclass
class Rollout:
    """One generated answer and its scores."""

    id: str
    polarity: Polarity
    instruction: int
    question_index: int
    sample: int
    system: str
    question: str
    response: str
    response_token_ids: list[int]
    finish_reason: str
    trait_score: float | None = None
    coherence: float | None = None
    kept: bool = False

    @property
    def pair_key(self) -> tuple[int, int, int]:
        return (self.instruction, self.question_index, self.sample)


@dataclass
class LayerSeparation:
    """How well layer ``layer``'s vector separates held-out pos from neg rollouts."""

    layer: int
    auroc: float
    cohens_d: float
    vector_norm: float
    typical_norm: float


@dataclass
class ExtractResult:
    """What an extraction produced (all paths are inside ``run_dir``)."""

    run_dir: Path
    vector_path: Path
    vector: PersonaVector
    rollouts: list[Rollout]
    kept_pairs: int
    total_pairs: int
    drop_reasons: dict[str, int]
    separation: list[LayerSeparation]
    suggested_layer: int
    report_path: Path


def default_run_dir(config: ExtractConfig) -> Path:
    """``runs/extract-<trait>-<model>``, with path-unsafe characters replaced."""
    trait = Path(config.trait).stem if config.trait.endswith(".json") else config.trait
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{trait}-{Path(config.model).name}").strip("-")
    return Path("runs") / f"extract-{slug}"


def plan_rollouts(trait: TraitSpec, config: ExtractConfig) -> list[GenerationRequest]:
    """One request per (polarity, instruction, question); ids are stable across runs."""
    n_instr = min(config.n_instructions or len(trait.instructions), len(trait.instructions))
    questions = trait.extraction_questions[: config.n_questions or None]
    requests = []
    for i in range(n_instr):
        for q, question in enumerate(questions):
            polarities: tuple[Polarity, Polarity] = ("pos", "neg")
            for polarity in polarities:
                system = trait.system_prompt(polarity, i)
                requests.append(
                    GenerationRequest(
                        chat_messages(question, system=system), f"{polarity}-i{i}-q{q}"
                    )
                )
    return requests


def _parse_id(request_id: str) -> tuple[Polarity, int, int]:
    polarity, i, q = request_id.split("-")
    return polarity, int(i[1:]), int(q[1:])  # type: ignore[return-value]


def generate_rollouts(
    loaded: LoadedModel,
    trait: TraitSpec,
    config: ExtractConfig,
    path: Path,
    *,
    show_progress: bool = True,
) -> list[Rollout]:
    """Generate every missing rollout, appending to ``path``; return all, in plan order."""
    requests = plan_rollouts(trait, config)
    existing = {row["id"]: row for row in read_jsonl(path)}
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        n_samples=config.samples,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    missing = [
        r for r in requests if any(f"{r.id}-s{s}" not in existing for s in range(config.samples))
    ]
    engine = HFEngine(loaded)
    per_chunk = max(1, config.batch_size // config.samples)
    total = len(requests) * config.samples
    done = total - len(missing) * config.samples
    with stage("generating rollouts", total, enabled=show_progress) as advance:
        advance(done)
        for start in range(0, len(missing), per_chunk):
            chunk = missing[start : start + per_chunk]
            rows = []
            for generation in engine.generate(chunk, sampling):
                request = chunk[generation.request_index]
                assert request.id is not None
                polarity, i, q = _parse_id(request.id)
                rows.append(
                    {
                        "id": f"{request.id}-s{generation.sample_index}",
                        "polarity": polarity,
                        "instruction": i,
                        "question_index": q,
                        "sample": generation.sample_index,
                        "system": request.messages[0]["content"],
                        "question": request.messages[-1]["content"],
                        "response": generation.response_text,
                        "response_token_ids": generation.response_token_ids,
                        "finish_reason": generation.finish_reason,
                    }
                )
            rows = [row for row in rows if row["id"] not in existing]
            append_jsonl(path, rows)
            existing.update({row["id"]: row for row in rows})
            done += len(chunk) * config.samples
            advance(done)
    ordered = []
    for request in requests:
        for s in range(config.samples):
            row = existing[f"{request.id}-s{s}"]
            ordered.append(Rollout(**{k: row[k] for k in Rollout.__dataclass_fields__ if k in row}))
    return ordered


def judge_rollouts(
    rollouts: Sequence[Rollout],
    trait_judge: Judge,
    coherence_judge: Judge,
    cache_path: Path,
    *,
    show_progress: bool = True,
) -> None:
    """Fill ``trait_score`` and ``coherence`` of every rollout (cached on disk)."""
    items = [JudgeItem(r.question, r.response) for r in rollouts]
    with JudgmentCache(cache_path) as cache:
        for judge, attribute, label in (
            (trait_judge, "trait_score", "judging trait"),
            (coherence_judge, "coherence", "judging coherence"),
        ):
            cached = len(cache.get_many(judge.identity, judge.aspect, items))
            with stage(label, len(items), enabled=show_progress) as advance:
                done = cached
                advance(done)

                def report(n: int) -> None:
                    nonlocal done
                    done += n
                    advance(done)

                scores = CachedJudge(judge, cache, chunk_size=32, on_chunk=report).score(items)
            for rollout, score in zip(rollouts, scores, strict=True):
                setattr(rollout, attribute, score)


def filter_pairs(
    rollouts: Sequence[Rollout], config: ExtractConfig
) -> tuple[list[tuple[Rollout, Rollout]], Counter[str]]:
    """Effective pairs (see the module docstring) and why the others were dropped.

    Each dropped pair counts once per failed condition, so reasons can add up to more than the
    number of dropped pairs.
    """
    by_key: dict[tuple[int, int, int], dict[str, Rollout]] = {}
    for rollout in rollouts:
        by_key.setdefault(rollout.pair_key, {})[rollout.polarity] = rollout
    kept: list[tuple[Rollout, Rollout]] = []
    reasons: Counter[str] = Counter()
    for key in sorted(by_key):
        pair = by_key[key]
        pos, neg = pair.get("pos"), pair.get("neg")
        if pos is None or neg is None:
            reasons["incomplete pair"] += 1
            continue
        failed = []
        if pos.trait_score is None or neg.trait_score is None:
            failed.append("trait unscored")
        else:
            if pos.trait_score < config.pos_threshold:
                failed.append(f"pos trait < {config.pos_threshold:g}")
            if neg.trait_score >= config.neg_threshold:
                failed.append(f"neg trait >= {config.neg_threshold:g}")
        for side, rollout in (("pos", pos), ("neg", neg)):
            if rollout.coherence is None:
                failed.append(f"{side} coherence unscored")
            elif rollout.coherence < config.coherence_threshold:
                failed.append(f"{side} coherence < {config.coherence_threshold:g}")
            if not rollout.response_token_ids:
                failed.append(f"{side} empty answer")
        pos.kept = neg.kept = not failed
        if failed:
            reasons.update(failed)
        else:
            kept.append((pos, neg))
    return kept, reasons


def layer_separation(
    pos: torch.Tensor, neg: torch.Tensor, layers: Sequence[int], typical: torch.Tensor
) -> list[LayerSeparation]:
    """Held-out separation per layer from per-pair readouts ``[pairs, layers, hidden]``.

    Two folds over pairs (even / odd): the vector from one fold projects the other fold's
    rollouts; AUROC and Cohen's d are computed over all held-out projections.
    """
    from personavec.metrics.stats import auroc, cohens_d

    n = pos.shape[0]
    folds = [torch.arange(0, n, 2), torch.arange(1, n, 2)]
    out = []
    for column, layer in enumerate(layers):
        p, q = pos[:, column].float(), neg[:, column].float()
        held_pos: list[float] = []
        held_neg: list[float] = []
        for train, test in ((folds[0], folds[1]), (folds[1], folds[0])):
            direction = p[train].mean(0) - q[train].mean(0)
            norm = direction.norm()
            if norm == 0 or len(test) == 0:
                continue
            unit = direction / norm
            held_pos += (p[test] @ unit).tolist()
            held_neg += (q[test] @ unit).tolist()
        vector = p.mean(0) - q.mean(0)
        out.append(
            LayerSeparation(
                layer,
                auroc(held_pos, held_neg),
                cohens_d(held_pos, held_neg),
                float(vector.norm()),
                float(typical[column]),
            )
        )
    return out


def suggest_layer(separation: Sequence[LayerSeparation], n_layers: int) -> int:
    """Best held-out separation (AUROC, then d) among the middle layers (35-70 % of depth).

    Steering works best in the middle of the network: the paper's chosen layers sit at 50-71 % of
    depth, a replication across sizes found about 55 %, and on SmolLM2 later layers separate
    well but steer weakly. ``personavec sweep`` refines the choice by measuring steering directly.
    """
    low, high = max(1, round(0.35 * n_layers)), max(1, round(0.70 * n_layers))
    middle = [s for s in separation if low <= s.layer <= high] or list(separation)

    def key(s: LayerSeparation) -> tuple[float, float]:
        a = s.auroc if s.auroc == s.auroc else -1.0
        d = s.cohens_d if s.cohens_d == s.cohens_d else -1.0
        return (round(a, 3), d)

    return max(middle, key=key).layer


def extract(
    config: ExtractConfig,
    *,
    run_dir: Path | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    loaded: LoadedModel | None = None,
    judge_base_url: str | None = None,
    judge_api_key: str | None = None,
) -> ExtractResult:
    """Run the whole extraction (see the module docstring); resumable in ``run_dir``.

    ``judge_base_url`` / ``judge_api_key`` reach LLM judges only and are never written to disk.
    """
    from personavec.pipeline.extract_report import write_report

    trait = load_trait(config.trait)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    check_run_identity(
        run_dir,
        config.model_dump(),
        _RUN_IDENTITY,
        overwrite=overwrite,
        stale=("rollouts.jsonl", "scored.jsonl"),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.model_dump())
    atomic_write_json(run_dir / "trait.json", trait.model_dump())
    if loaded is None:
        loaded = load_model(config.model, device=config.device, dtype=config.dtype)

    rollouts = generate_rollouts(
        loaded, trait, config, run_dir / "rollouts.jsonl", show_progress=show_progress
    )
    trait_judge = make_judge(
        config.judge,
        aspect="trait",
        trait=trait,
        loaded_model=loaded,
        base_url=judge_base_url,
        api_key=judge_api_key,
    )
    coherence_judge = make_judge(
        config.resolved_coherence_judge(),
        aspect="coherence",
        trait=trait,
        loaded_model=loaded,
        base_url=judge_base_url,
        api_key=judge_api_key,
    )
    judge_rollouts(
        rollouts,
        trait_judge,
        coherence_judge,
        run_dir / "judgments.sqlite",
        show_progress=show_progress,
    )
    kept, reasons = filter_pairs(rollouts, config)
    atomic_write_text(
        run_dir / "scored.jsonl",
        "".join(json.dumps(r.__dict__, ensure_ascii=False) + "\n" for r in rollouts),
    )
    total_pairs = len(rollouts) // 2
    if len(kept) < config.min_pairs:
        top = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common(3))
        raise PersonavecError(
            f"only {len(kept)} of {total_pairs} pairs passed the filter (need {config.min_pairs}; "
            f"{top}); add --samples or --questions, relax the thresholds, or try another judge "
            f"(rollouts and scores are saved in {run_dir})"
        )

    examples = [
        Example(
            chat_messages(r.question, system=r.system),
            r.response,
            response_ids=r.response_token_ids,
        )
        for pair in kept
        for r in pair
    ]
    groups = [r.polarity for pair in kept for r in pair]
    with stage("capturing activations", len(examples), enabled=show_progress) as advance:
        captured = capture(
            loaded,
            examples,
            groups=groups,
            keep_per_example=True,
            per_example_dtype=torch.float16 if loaded.hidden_size > 2048 else torch.float32,
            batch_size=config.batch_size,
            progress=advance,
        )
    vectors = {
        name: captured.means[name]["pos"] - captured.means[name]["neg"] for name in captured.means
    }
    assert captured.per_example is not None
    per_pair = captured.per_example["response_avg"]
    separation = layer_separation(
        per_pair[0::2], per_pair[1::2], captured.layers, captured.token_norm
    )
    n_layers = len(captured.layers) - 1
    suggested = suggest_layer(separation, n_layers)
    meta = VectorMetadata(
        trait=trait.name,
        model_id=loaded.model_id,
        model_fingerprint=config_fingerprint(loaded.model.config),
        hidden_size=loaded.hidden_size,
        n_layers=n_layers,
        layer_convention=LAYER_CONVENTION,
        readouts=sorted(vectors),
        sample_counts={"pos": len(kept), "neg": len(kept), "rollouts": len(rollouts)},
        judge=f"trait={trait_judge.identity}; coherence={coherence_judge.identity}",
        thresholds={
            "pos": config.pos_threshold,
            "neg": config.neg_threshold,
            "coherence": config.coherence_threshold,
        },
        recommended_layer=suggested,
        extra={"run_dir": str(run_dir), "layer_choice": "held-out separation, middle layers"},
    )
    vector = PersonaVector(
        vectors,
        meta,
        typical_norm=captured.token_norm,
        # Every kept rollout (both polarities) projected on the default (response_avg) vector.
        projection_percentiles=projection_percentiles(per_pair, vectors[meta.default_readout]),
    )
    vector_path = vector.save(run_dir / f"{trait.name}.safetensors")
    result = ExtractResult(
        run_dir=run_dir,
        vector_path=vector_path,
        vector=vector,
        rollouts=rollouts,
        kept_pairs=len(kept),
        total_pairs=total_pairs,
        drop_reasons=dict(reasons),
        separation=separation,
        suggested_layer=suggested,
        report_path=run_dir / "report.md",
    )
    write_report(result, config, trait)
    return result

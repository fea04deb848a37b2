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

The run directory is locked while an extraction works in it (a second process is refused). A
re-run resumes only when the settings that shape the rollouts are unchanged; the trait counts by
the hash of its content, so an edited trait file (same path) is never mixed with old rollouts.
Runs made before that hash was recorded are compared through their saved ``trait.json`` copy.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from personavec.core.capture import CaptureResult, Example, capture
from personavec.core.layers import LAYER_CONVENTION
from personavec.core.models import LoadedModel, chat_messages, load_model
from personavec.core.vector import (
    PersonaVector,
    VectorMetadata,
    config_fingerprint,
    projection_percentiles,
)
from personavec.engines.factory import make_engine
from personavec.engines.generation import Generation, GenerationRequest, SamplingConfig
from personavec.errors import PersonavecError
from personavec.judges.base import Judge, JudgeItem
from personavec.judges.factory import make_judge
from personavec.pipeline.extract_estimators import attach_estimators
from personavec.pipeline.extract_report import write_report
from personavec.pipeline.extract_selection import filter_pairs, layer_separation, suggest_layer
from personavec.pipeline.extract_types import (
    ExtractConfig,
    ExtractResult,
    LayerSeparation,
    Polarity,
    Rollout,
)
from personavec.progress import stage
from personavec.runs.identity import content_sha256, weights_sha256
from personavec.runs.judging import judge_items
from personavec.runs.rows import resumable_rows
from personavec.runs.run import open_run
from personavec.store import atomic_write_json, atomic_write_jsonl
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec

# Settings whose change makes earlier rollouts invalid for this run directory. The trait counts
# by content (its hash), not by name or path: an edited trait file changes questions and prompts.
_OUTPUTS = (
    "rollouts.jsonl",
    "scored.jsonl",
    "trait.json",
    "*.safetensors",
    "summary.json",
    "report.md",
    "separation.png",
)
"""Files tied to the run's identity (``judgments.sqlite`` is keyed by content and stays)."""


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


def _rollout_row(request: GenerationRequest, generation: Generation) -> dict[str, Any]:
    assert request.id is not None
    polarity, i, q = _parse_id(request.id)
    return {
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


def generate_rollouts(
    loaded: LoadedModel,
    trait: TraitSpec,
    config: ExtractConfig,
    path: Path,
    *,
    show_progress: bool = True,
) -> list[Rollout]:
    """Generate every missing rollout, appending to ``path``; return all, in plan order."""
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        n_samples=config.samples,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    engine = make_engine(config.engine, loaded)

    def produce(chunk: list[GenerationRequest]) -> list[dict[str, Any]]:
        generations = engine.generate(chunk, sampling)
        return [_rollout_row(chunk[g.request_index], g) for g in generations]

    rows = resumable_rows(
        path,
        plan_rollouts(trait, config),
        row_keys=lambda r: [f"{r.id}-s{s}" for s in range(config.samples)],
        produce=produce,
        chunk_size=max(1, config.batch_size // config.samples),
        label="generating rollouts",
        show_progress=show_progress,
    )
    fields = Rollout.__dataclass_fields__
    return [Rollout(**{k: row[k] for k in fields if k in row}) for row in rows]


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
    scores = judge_items(
        items,
        {"trait": trait_judge, "coherence": coherence_judge},
        cache_path,
        show_progress=show_progress,
    )
    for rollout, trait, coherence in zip(
        rollouts, scores["trait"], scores["coherence"], strict=True
    ):
        rollout.trait_score, rollout.coherence = trait, coherence


def trait_sha256(trait: TraitSpec) -> str:
    """The hash of a trait's content that goes into the run identity."""
    return content_sha256(trait.model_dump(mode="json"))


def _saved_trait_sha256(run_dir: Path) -> str | None:
    """An older run recorded no trait hash; its ``trait.json`` copy tells (else: unknown)."""
    try:
        return content_sha256(json.loads((run_dir / "trait.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _make_judges(
    config: ExtractConfig,
    trait: TraitSpec,
    loaded: LoadedModel,
    access: dict[str, Any],
) -> tuple[Judge, Judge]:
    """The trait judge and the coherence judge named in ``config``.

    ``access``: ``base_url``, ``api_key``, ``timeout_s`` and ``concurrency`` for LLM judges.
    """
    common: dict[str, Any] = {"trait": trait, "loaded_model": loaded, **access}
    return (
        make_judge(config.judge, aspect="trait", **common),
        make_judge(config.resolved_coherence_judge(), aspect="coherence", **common),
    )


def _require_pairs(
    kept: Sequence[object], reasons: Counter[str], total: int, config: ExtractConfig, run_dir: Path
) -> None:
    if len(kept) >= config.min_pairs:
        return
    top = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common(3))
    raise PersonavecError(
        f"only {len(kept)} of {total} pairs passed the filter (need {config.min_pairs}; "
        f"{top}); add --samples or --questions, relax the thresholds, or try another judge "
        f"(rollouts and scores are saved in {run_dir})"
    )


def capture_pairs(
    loaded: LoadedModel,
    kept: Sequence[tuple[Rollout, Rollout]],
    config: ExtractConfig,
    *,
    show_progress: bool = True,
) -> CaptureResult:
    """All readouts at every layer for the kept pairs, grouped ``pos`` / ``neg``.

    Per-example readouts are kept in pair order (pos, neg, pos, neg, ...).
    """
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
        return capture(
            loaded,
            examples,
            groups=groups,
            keep_per_example=True,
            per_example_dtype=torch.float16 if loaded.hidden_size > 2048 else torch.float32,
            batch_size=config.batch_size,
            progress=advance,
        )


def build_vector(
    captured: CaptureResult,
    loaded: LoadedModel,
    trait: TraitSpec,
    config: ExtractConfig,
    judges: tuple[Judge, Judge],
    *,
    n_kept: int,
    n_rollouts: int,
    run_dir: Path,
) -> tuple[PersonaVector, list[LayerSeparation], int]:
    """The persona vector (mean pos − mean neg per readout and layer), the held-out separation
    per layer and the suggested layer."""
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
        sample_counts={"pos": n_kept, "neg": n_kept, "rollouts": n_rollouts},
        judge=f"trait={judges[0].identity}; coherence={judges[1].identity}",
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
    return vector, separation, suggested


def extract(
    config: ExtractConfig,
    *,
    run_dir: Path | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    loaded: LoadedModel | None = None,
    judge_base_url: str | None = None,
    judge_api_key: str | None = None,
    judge_timeout_s: float | None = None,
    judge_concurrency: int = 8,
) -> ExtractResult:
    """Run the whole extraction (see the module docstring); resumable in ``run_dir``.

    The run directory is locked while the extraction runs (a second process is refused), and
    ``config.json`` is written only once the model and judges are ready, so a run that failed
    on bad input leaves nothing that blocks the corrected one. ``judge_base_url`` /
    ``judge_api_key`` / ``judge_timeout_s`` (seconds per request) / ``judge_concurrency`` reach
    LLM judges only and are never written to disk.
    """
    trait = load_trait(config.trait)
    config = config.model_copy(update={"trait_sha256": trait_sha256(trait)})
    # Runs from before ``--engine`` generated with the HF engine.
    recover = {"trait_sha256": _saved_trait_sha256, "engine": lambda _run: "hf"}
    with open_run(
        run_dir if run_dir is not None else default_run_dir(config),
        config.model_dump(),
        outputs=_OUTPUTS,
        overwrite=overwrite,
        recover=recover,
    ) as run:
        if loaded is None:
            loaded = load_model(config.model, device=config.device, dtype=config.dtype)
        access = {
            "base_url": judge_base_url,
            "api_key": judge_api_key,
            "timeout_s": judge_timeout_s,
            "concurrency": judge_concurrency,
        }
        judges = _make_judges(config, trait, loaded, access)
        run.start(weights_sha256=weights_sha256(loaded.model))
        atomic_write_json(run.dir / "trait.json", trait.model_dump())
        return _run_stages(config, trait, loaded, judges, run.dir, show_progress)


def _run_stages(
    config: ExtractConfig,
    trait: TraitSpec,
    loaded: LoadedModel,
    judges: tuple[Judge, Judge],
    run_dir: Path,
    show_progress: bool,
) -> ExtractResult:
    rollouts = generate_rollouts(
        loaded, trait, config, run_dir / "rollouts.jsonl", show_progress=show_progress
    )
    judge_rollouts(rollouts, *judges, run_dir / "judgments.sqlite", show_progress=show_progress)
    kept, reasons = filter_pairs(rollouts, config)
    atomic_write_jsonl(run_dir / "scored.jsonl", [r.__dict__ for r in rollouts])
    total_pairs = len(rollouts) // 2
    _require_pairs(kept, reasons, total_pairs, config, run_dir)
    captured = capture_pairs(loaded, kept, config, show_progress=show_progress)
    vector, separation, suggested = build_vector(
        captured,
        loaded,
        trait,
        config,
        judges,
        n_kept=len(kept),
        n_rollouts=len(rollouts),
        run_dir=run_dir,
    )
    vector = attach_estimators(vector, captured, [pos.question_index for pos, _ in kept])
    result = ExtractResult(
        run_dir=run_dir,
        vector_path=vector.save(run_dir / f"{trait.name}.safetensors"),
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

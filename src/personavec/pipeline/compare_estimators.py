"""``personavec compare-estimators``: mean-diff, PCA and the probe, per layer, on held-out data.

For each compared layer ``L`` and estimator ``e`` stored in the vector file
(:mod:`personavec.core.estimators`), on the trait's held-out ``evaluation_questions``:

1. **Separation** (monitoring). Each question is answered under the trait's eliciting and
   suppressing system prompts (the first ``instructions`` pairs, as extraction does for its own
   questions; :func:`~personavec.pipeline.extract.generate_rollouts`), the answers are judged,
   and each answer's ``response_avg`` at ``L`` is read *without* the system prompt (a monitor
   sees the conversation, not the instruction) and projected on ``v̂_e,L``. AUROC and Cohen's d
   between answers judged ≥ ``label_threshold`` and below it.
2. **Steering.** The unsteered questions are answered with ``±coef · typical_norm_L · v̂_e,L``
   added (the same added norm for every estimator) through the evaluate/sweep cells
   (:func:`~personavec.pipeline.evaluate_cells.run_cells`), judged for trait, coherence and
   relevance; the coefficient-0 cell is the shared baseline.
3. The cosine between estimators at ``L``.

The measures are defined in :mod:`.compare_estimators_types`. The run directory is a run like
every other (:func:`personavec.runs.open_run`): its identity holds the trait's content, the
questions, every sampling and judging setting (the judge specs included), the vector's tensors,
the layers, strength and estimators, and the model's weights; answers (``answers.jsonl``,
``heldout.jsonl``) and judgments (``judgments.sqlite``) are reused on a re-run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from personavec.core.capture import Example, capture
from personavec.core.estimators import ESTIMATORS, check_estimator
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.metrics.stats import auroc, cohens_d
from personavec.pipeline.compare_estimators_report import write_compare_report
from personavec.pipeline.compare_estimators_types import (
    CompareResult,
    EstimatorRow,
    Separation,
    SteerNumbers,
    harmonic,
)
from personavec.pipeline.compare_relevance import RelevanceJudge
from personavec.pipeline.evaluate import prepare_evaluation
from personavec.pipeline.evaluate_cells import run_cells
from personavec.pipeline.evaluate_types import CellResult, EvalSettings, Judges
from personavec.pipeline.extract import generate_rollouts, judge_rollouts
from personavec.pipeline.extract_types import ExtractConfig, Rollout
from personavec.runs.identity import content_sha256, vector_sha256, weights_sha256
from personavec.runs.run import open_run
from personavec.store import atomic_write_json
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec

OUTPUTS = ("answers.jsonl", "heldout.jsonl", "summary.json", "report.md", "*.png")
"""Files tied to a comparison's identity (``judgments.sqlite`` is keyed by content and stays)."""
_ACCESS_FIELDS = ("judge_timeout_s", "judge_concurrency")


def stored_estimators(vector: PersonaVector, names: Sequence[str] | None = None) -> list[str]:
    """The estimators to compare: ``names`` (checked), else every one the file holds."""
    held = ["mean-diff", *vector.meta.estimators]
    chosen: list[str] = (
        list(dict.fromkeys(names)) if names else [e for e in ESTIMATORS if e in held]
    )
    for name in chosen:
        if check_estimator(name) not in held:
            vector.with_estimator(name)  # raises the one-line "holds no … estimator" error
    if len(chosen) < 2:
        raise PersonavecError(
            "compare-estimators needs at least two estimators; the vector holds "
            f"{', '.join(held)} (re-run `personavec extract` to add pca and probe)"
        )
    return chosen


def compare_estimators(
    loaded: LoadedModel,
    trait: str | TraitSpec,
    vector: PersonaVector,
    *,
    layers: Sequence[int] | None = None,
    coef: float = 0.2,
    estimators: Sequence[str] | None = None,
    questions: int | None = None,
    instructions: int = 1,
    samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    seed: int = 0,
    positions: str = "all",
    label_threshold: float = 50.0,
    judge: str = "contrast",
    coherence_judge: str = "heuristic",
    run_dir: str | Path,
    write: bool = False,
    overwrite: bool = False,
    force: bool = False,
    show_progress: bool = True,
    judge_timeout_s: float | None = None,
    judge_concurrency: int = 8,
) -> CompareResult:
    """Compare the vector's estimators per layer (see the module docstring).

    ``layers`` default to the vector's recommended layer; ``coef`` is the relative strength
    (fraction of the layer's typical residual norm), used with both signs; ``instructions``
    instruction pairs make the held-out separation answers. With ``write``, the recommended
    estimator per use is written into the vector file (last, atomically).
    """
    spec = trait if isinstance(trait, TraitSpec) else load_trait(trait)
    stored = vector.canonical()
    stored.check_compatible(loaded.model, force=force)
    names = stored_estimators(stored, estimators)
    layer_list = sorted(set(layers)) if layers else [stored.layer_or_recommended()]
    if not coef > 0:
        raise PersonavecError(f"--coef must be a positive relative strength, got {coef:g}")
    if not 1 <= instructions <= len(spec.instructions):
        raise PersonavecError(
            f"--instructions must be 1..{len(spec.instructions)} (the trait's pairs)"
        )
    views = {name: stored.with_estimator(name) for name in names}
    cells = [
        SteeringSetting(views[e], (layer,), sign * coef, "relative", positions)  # type: ignore[arg-type]
        for layer in layer_list
        for e in names
        for sign in (1.0, -1.0)
    ]
    settings, question_list, judges = prepare_evaluation(
        loaded,
        spec,
        judge,
        questions=questions,
        samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        coherence_judge=coherence_judge,
        judge_timeout_s=judge_timeout_s,
        judge_concurrency=judge_concurrency,
    )
    judges = dataclasses.replace(judges, others={"relevance": RelevanceJudge()})
    identity: dict[str, Any] = {
        "trait_sha256": content_sha256(spec.model_dump(mode="json")),
        "questions": question_list,
        "settings": {k: v for k, v in asdict(settings).items() if k not in _ACCESS_FIELDS},
        "relevance_judge": judges.others["relevance"].identity,
        "vector_sha256": vector_sha256(stored),
        "layers": layer_list,
        "coef": coef,
        "estimators": names,
        "positions": positions,
        "heldout": {"instructions": instructions, "label_threshold": label_threshold},
    }
    with open_run(run_dir, identity, outputs=OUTPUTS, overwrite=overwrite) as run:
        run.start(weights_sha256=weights_sha256(loaded.model))
        steered = run_cells(
            loaded,
            [cells[0].baseline(), *cells],
            question_list,
            settings,
            judges,
            run.dir,
            show_progress=show_progress,
        )
        heldout = _heldout(loaded, spec, question_list, settings, judges, instructions, run.dir)
        every_layer = list(range(stored.meta.n_layers + 1))
        readouts, labels = heldout_readouts(loaded, heldout, every_layer, label_threshold)
        result = _result(run.dir, spec.name, views, layer_list, coef, steered, (readouts, labels))
        result.heldout["unscored"] = sum(r.trait_score is None for r in heldout)
        result.judge = judges.describe() + f"; relevance={judges.others['relevance'].identity}"
        result.settings = {**asdict(settings), **identity["heldout"], "positions": positions}
        write_compare_report(result)
        atomic_write_json(run.dir / "summary.json", summary(result))
        if write and stored.path is not None:
            meta = stored.meta.model_copy(
                update={"recommended_estimators": _recommendation(result)}
            )
            dataclasses.replace(stored, meta=meta).save(stored.path)
    return result


def _recommendation(result: CompareResult) -> dict[str, str]:
    """``meta.recommended_estimators`` from a comparison (both uses measured)."""
    basis = (
        f"compare-estimators {result.run_dir}: held-out questions, layers "
        f"{','.join(map(str, result.layers))}, relative strength ±{result.coef:g}"
    )
    best = result.recommended()
    return {
        "monitoring": best["monitoring"],
        "monitoring_basis": f"{basis}; mean AUROC, then Cohen's d",
        "steering": best["steering"],
        "steering_basis": f"{basis}; mean harmonic towards the trait, then trait change",
    }


def _heldout(
    loaded: LoadedModel,
    spec: TraitSpec,
    questions: list[str],
    settings: EvalSettings,
    judges: Judges,
    instructions: int,
    run_dir: Path,
) -> list[Rollout]:
    """Held-out answers under the eliciting and suppressing prompts, judged (resumable)."""
    held = spec.model_copy(update={"extraction_questions": list(questions)})
    config = ExtractConfig(
        trait=spec.name,
        n_instructions=instructions,
        samples=settings.samples,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        batch_size=settings.batch_size,
    )
    path = run_dir / "heldout.jsonl"
    rollouts = generate_rollouts(loaded, held, config, path, show_progress=False)
    judge_rollouts(
        rollouts, judges.trait, judges.coherence, run_dir / "judgments.sqlite", show_progress=False
    )
    return rollouts


def heldout_readouts(
    loaded: LoadedModel, rollouts: Sequence[Rollout], layers: Sequence[int], threshold: float
) -> tuple[torch.Tensor, list[bool]]:
    """``response_avg`` readouts ``[answers, len(layers), hidden]`` of the scored, non-empty
    held-out answers, read without the system prompt, and their labels (score ≥ threshold)."""
    usable = [r for r in rollouts if r.trait_score is not None and r.response_token_ids]
    if not usable:
        return torch.zeros(0, len(layers), loaded.hidden_size), []
    examples = [
        Example(chat_messages(r.question), r.response, response_ids=r.response_token_ids)
        for r in usable
    ]
    captured = capture(
        loaded, examples, layers=list(layers), readouts=["response_avg"], keep_per_example=True
    )
    assert captured.per_example is not None
    labels = [float(r.trait_score) >= threshold for r in usable]  # type: ignore[arg-type]
    return captured.per_example["response_avg"].float(), labels


def _steer(cell: CellResult, baseline: CellResult, base_relevance: float) -> SteerNumbers:
    change = cell.trait.mean - baseline.trait.mean
    relevance = cell.off_target["relevance"].mean
    ratio = relevance / base_relevance if base_relevance > 0 else float("nan")
    directed = change if cell.cell.coef > 0 else -change
    return SteerNumbers(
        coef=cell.cell.coef,
        trait=cell.trait.mean,
        trait_change=change,
        coherence=cell.coherence.mean,
        relevance=relevance,
        relevance_ratio=ratio,
        harmonic=harmonic(directed, cell.coherence.mean, ratio),
        n=cell.trait.n,
    )


def _result(
    run_dir: Path,
    trait: str,
    views: dict[str, PersonaVector],
    layers: list[int],
    coef: float,
    cells: list[CellResult],
    heldout: tuple[torch.Tensor, list[bool]],
) -> CompareResult:
    """Numbers per (layer, estimator) from the measured cells (``cells[0]`` the baseline, then
    layer × estimator × (+, −) in order) and the held-out readouts and labels."""
    baseline, steered = cells[0], iter(cells[1:])
    base_relevance = baseline.off_target["relevance"].mean
    separation = _separation(views, *heldout)
    rows, cosines = [], {}
    for layer in layers:
        for name, view in views.items():
            toward, away = next(steered), next(steered)
            held = separation[(layer, name)]
            rows.append(
                EstimatorRow(
                    layer,
                    name,
                    held.auroc,
                    held.cohens_d,
                    _steer(toward, baseline, base_relevance),
                    _steer(away, baseline, base_relevance),
                    float(view.at(layer).norm()),
                )
            )
        cosines[layer] = {
            f"{a}|{b}": float(views[a].direction(layer) @ views[b].direction(layer))
            for i, a in enumerate(views)
            for b in list(views)[i + 1 :]
        }
    return CompareResult(
        run_dir=run_dir,
        trait=trait,
        layers=layers,
        estimators=list(views),
        coef=coef,
        rows=rows,
        cosines=cosines,
        baseline={
            "trait": baseline.trait.mean,
            "coherence": baseline.coherence.mean,
            "relevance": base_relevance,
        },
        heldout={
            "exhibiting": sum(heldout[1]),
            "not_exhibiting": len(heldout[1]) - sum(heldout[1]),
        },
        judge="",
        separation=list(separation.values()),
    )


def _separation(
    views: dict[str, PersonaVector], readouts: torch.Tensor, labels: list[bool]
) -> dict[tuple[int, str], Separation]:
    """(layer, estimator) → held-out separation, every layer; ``readouts`` ``[answers, layers,
    hidden]`` with a column per layer ``0..n``. A zero vector (layer 0) separates nothing: NaN."""
    out = {}
    for layer in range(readouts.shape[1]):
        for name, view in views.items():
            vector = view.at(layer).float()
            norm = vector.norm()
            values = (readouts[:, layer] @ (vector / norm)).tolist() if norm > 0 else []
            shown = [v for v, label in zip(values, labels, strict=False) if label]
            hidden = [v for v, label in zip(values, labels, strict=False) if not label]
            out[(layer, name)] = Separation(
                layer, name, auroc(shown, hidden), cohens_d(shown, hidden)
            )
    return out


def summary(result: CompareResult) -> dict[str, Any]:
    """The JSON written to ``summary.json``."""
    out = asdict(result)
    out["run_dir"] = str(result.run_dir)
    out["report_path"] = str(result.report_path) if result.report_path else None
    out["recommended"] = result.recommended()
    return out

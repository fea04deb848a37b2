"""The extraction report: ``report.md``, ``summary.json`` and ``separation.png``."""

from __future__ import annotations

from typing import Any

from personavec.pipeline.extract_types import ExtractConfig, ExtractResult, LayerSeparation
from personavec.runs.plots import separation_chart
from personavec.store import atomic_write_bytes, atomic_write_json, atomic_write_text
from personavec.traits.schema import TraitSpec


def _plot(result: ExtractResult) -> bytes:
    rows = result.separation
    return separation_chart(
        [s.layer for s in rows],
        [s.auroc for s in rows],
        [s.cohens_d for s in rows],
        [s.vector_norm / s.typical_norm if s.typical_norm else 0 for s in rows],
        suggested_layer=result.suggested_layer,
        trait=result.vector.meta.trait,
    )


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else text


def write_report(result: ExtractResult, config: ExtractConfig, trait: TraitSpec) -> None:
    """Write ``separation.png``, ``summary.json`` and ``report.md`` into ``result.run_dir``."""
    run_dir = result.run_dir
    atomic_write_bytes(run_dir / "separation.png", _plot(result))
    best = next(s for s in result.separation if s.layer == result.suggested_layer)
    atomic_write_json(run_dir / "summary.json", summary(result, trait, best))
    lines = _overview(result, config, trait) + _layers(result, best) + _examples(result)
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")


def summary(result: ExtractResult, trait: TraitSpec, best: LayerSeparation) -> dict[str, Any]:
    """The content of ``summary.json``."""
    return {
        "trait": trait.name,
        "model": result.vector.meta.model_id,
        "vector": str(result.vector_path),
        "rollouts": len(result.rollouts),
        "pairs": result.total_pairs,
        "kept_pairs": result.kept_pairs,
        "drop_reasons": result.drop_reasons,
        "suggested_layer": result.suggested_layer,
        "suggested_layer_auroc": best.auroc,
        "suggested_layer_cohens_d": best.cohens_d,
        "separation": [s.__dict__ for s in result.separation],
        "judge": result.vector.meta.judge,
        "estimators": ["mean-diff", *result.vector.meta.estimators],
        "recommended_estimators": result.vector.meta.recommended_estimators,
    }


def _overview(result: ExtractResult, config: ExtractConfig, trait: TraitSpec) -> list[str]:
    scored = [r for r in result.rollouts if r.trait_score is not None]
    mean_pos = _mean([r.trait_score for r in scored if r.polarity == "pos"])
    mean_neg = _mean([r.trait_score for r in scored if r.polarity == "neg"])
    meta = result.vector.meta
    lines = [
        f"# Persona vector: {trait.name}",
        "",
        f"*{trait.description}*",
        "",
        f"- Model: `{meta.model_id}`",
        f"- Vector file: `{result.vector_path.name}` (layers 0..{meta.n_layers}, "
        f"readouts {', '.join(meta.readouts)})",
        f"- Judges: {meta.judge}",
        f"- Rollouts: {len(result.rollouts)} ({config.samples} per instruction × question, "
        f"≤ {config.max_new_tokens} new tokens, temperature {config.temperature:g}, "
        f"seed {config.seed})",
        f"- Mean trait score: eliciting prompts {mean_pos}, suppressing prompts {mean_neg}",
        f"- Pairs kept: **{result.kept_pairs} of {result.total_pairs}** (pos ≥ "
        f"{config.pos_threshold:g}, neg < {config.neg_threshold:g}, coherence ≥ "
        f"{config.coherence_threshold:g})",
        *_estimators(meta.estimators, meta.recommended_estimators),
        "",
    ]
    if result.drop_reasons:
        lines += ["Why pairs were dropped (a pair can fail several conditions):", ""]
        lines += [
            f"- {reason}: {count}"
            for reason, count in sorted(result.drop_reasons.items(), key=lambda kv: -kv[1])
        ]
        lines.append("")
    return lines


def _layers(result: ExtractResult, best: LayerSeparation) -> list[str]:
    lines = [
        f"## Suggested layer: {result.suggested_layer}",
        "",
        f"Held-out AUROC {best.auroc:.3f}, Cohen's d {best.cohens_d:.2f} (a vector built from half "
        "the pairs scores the other half). The suggestion is the best-separating layer in the "
        "middle half of the network; `personavec sweep` measures steering directly.",
        "",
        "![separation](separation.png)",
        "",
        "| layer | AUROC | Cohen's d | ‖v‖ | typical norm |",
        "|---:|---:|---:|---:|---:|",
    ]
    return lines + [
        f"| {s.layer} | {s.auroc:.3f} | {s.cohens_d:.2f} | {s.vector_norm:.2f} | "
        f"{s.typical_norm:.1f} |"
        for s in result.separation
    ]


def _examples(result: ExtractResult) -> list[str]:
    kept = [r for r in result.rollouts if r.kept]
    examples = [r for r in kept if r.polarity == "pos"][:1]
    examples += [r for r in kept if r.polarity == "neg"][:1]
    if not examples:
        return []
    lines = ["", "## Example kept rollouts", ""]
    for r in examples:
        lines += [
            f"**{r.polarity}** (trait {r.trait_score:.0f}, coherence {r.coherence:.0f}) — "
            f"*{_quote(r.question, 120)}*",
            "",
            f"> {_quote(r.response)}",
            "",
        ]
    return lines


def _mean(values: list[float | None]) -> str:
    numbers = [v for v in values if v is not None]
    return f"{sum(numbers) / len(numbers):.1f}" if numbers else "n/a"


def _estimators(others: dict[str, Any], recommended: dict[str, str]) -> list[str]:
    """The estimator lines of the overview (none for a vector without other estimators)."""
    if not others:
        return []
    lines = [
        "- Estimators stored: mean-diff (`response_avg`, the default), "
        + ", ".join(f"{name} (`response_avg@{name}`)" for name in others)
        + "; select one with `personavec --estimator NAME <command>`"
    ]
    for use in ("monitoring", "steering"):
        if use in recommended:
            basis = recommended.get(f"{use}_basis", "")
            lines.append(f"- Recommended for {use}: **{recommended[use]}** ({basis})")
    return lines

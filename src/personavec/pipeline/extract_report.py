"""The extraction report: ``report.md``, ``summary.json`` and ``separation.png``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from personavec.store import atomic_write_bytes, atomic_write_json, atomic_write_text
from personavec.traits.schema import TraitSpec

if TYPE_CHECKING:
    from personavec.pipeline.extract import ExtractConfig, ExtractResult


def _plot(result: ExtractResult) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [s.layer for s in result.separation]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(layers, [s.auroc for s in result.separation], marker="o", ms=3, label="AUROC")
    ax1.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax1.set_ylim(0.0, 1.02)
    ax1.set_xlabel("layer")
    ax1.set_ylabel("held-out AUROC")
    ax1b = ax1.twinx()
    ax1b.plot(layers, [s.cohens_d for s in result.separation], color="tab:orange", marker=".", ms=3)
    ax1b.set_ylabel("Cohen's d", color="tab:orange")
    ax1.axvline(result.suggested_layer, color="tab:green", lw=1, label="suggested layer")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title(f"{result.vector.meta.trait}: pos vs neg projections")
    ratio = [s.vector_norm / s.typical_norm if s.typical_norm else 0 for s in result.separation]
    ax2.plot(layers, ratio, marker="o", ms=3, color="tab:purple")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("‖v‖ / typical residual norm")
    ax2.set_title("vector size relative to the residual stream")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else text


def write_report(result: ExtractResult, config: ExtractConfig, trait: TraitSpec) -> None:
    """Write the report files into ``result.run_dir``."""
    run_dir = result.run_dir
    atomic_write_bytes(run_dir / "separation.png", _plot(result))
    best = next(s for s in result.separation if s.layer == result.suggested_layer)
    summary = {
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
    }
    atomic_write_json(run_dir / "summary.json", summary)

    scored = [r for r in result.rollouts if r.trait_score is not None]
    mean_pos = _mean([r.trait_score for r in scored if r.polarity == "pos"])
    mean_neg = _mean([r.trait_score for r in scored if r.polarity == "neg"])
    lines = [
        f"# Persona vector: {trait.name}",
        "",
        f"*{trait.description}*",
        "",
        f"- Model: `{result.vector.meta.model_id}`",
        f"- Vector file: `{result.vector_path.name}` (layers 0..{result.vector.meta.n_layers}, "
        f"readouts {', '.join(result.vector.meta.readouts)})",
        f"- Judges: {result.vector.meta.judge}",
        f"- Rollouts: {len(result.rollouts)} ({config.samples} per instruction × question, "
        f"≤ {config.max_new_tokens} new tokens, temperature {config.temperature:g}, "
        f"seed {config.seed})",
        f"- Mean trait score: eliciting prompts {mean_pos}, suppressing prompts {mean_neg}",
        f"- Pairs kept: **{result.kept_pairs} of {result.total_pairs}** (pos ≥ "
        f"{config.pos_threshold:g}, neg < {config.neg_threshold:g}, coherence ≥ "
        f"{config.coherence_threshold:g})",
        "",
    ]
    if result.drop_reasons:
        lines += ["Why pairs were dropped (a pair can fail several conditions):", ""]
        lines += [
            f"- {reason}: {count}"
            for reason, count in sorted(result.drop_reasons.items(), key=lambda kv: -kv[1])
        ]
        lines.append("")
    lines += [
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
    lines += [
        f"| {s.layer} | {s.auroc:.3f} | {s.cohens_d:.2f} | {s.vector_norm:.2f} | "
        f"{s.typical_norm:.1f} |"
        for s in result.separation
    ]
    kept = [r for r in result.rollouts if r.kept]
    examples = [r for r in kept if r.polarity == "pos"][:1] + [
        r for r in kept if r.polarity == "neg"
    ][:1]
    if examples:
        lines += ["", "## Example kept rollouts", ""]
        for r in examples:
            lines += [
                f"**{r.polarity}** (trait {r.trait_score:.0f}, coherence {r.coherence:.0f}) — "
                f"*{_quote(r.question, 120)}*",
                "",
                f"> {_quote(r.response)}",
                "",
            ]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")


def _mean(values: list[float | None]) -> str:
    numbers = [v for v in values if v is not None]
    return f"{sum(numbers) / len(numbers):.1f}" if numbers else "n/a"

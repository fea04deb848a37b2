"""The prevention study's Markdown report and its Figure-7-shaped plot (trait score and capability
against the coefficient, one line per method)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personavec.runs.plots import new_figure, to_png
from personavec.store import atomic_write_bytes, atomic_write_text
from personavec.studies.prevent_study_types import StudyContext, VariantRecord

PLOT = "prevent_study.png"
COHERENCE_FLOOR = 80.0  # the paper reports preventative steering only where coherence > 80


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def table(records: Sequence[VariantRecord]) -> str:
    """One Markdown row per variant."""
    lines = [
        "| variant | method | coef | trait | coherence | MC acc | perplexity | shift | loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r.name} | {r.method} | {_fmt(r.coef, 2)} | {_fmt(r.trait)} | "
            f"{_fmt(r.coherence)} | {_fmt(r.mc_accuracy * 100)} % | {_fmt(r.perplexity, 2)} | "
            f"{_fmt(r.shift, 3)} | {_fmt(r.train_loss, 3)} |"
        )
    return "\n".join(lines)


def findings(records: Sequence[VariantRecord]) -> list[str]:
    """The study's questions, answered from the numbers (no claim the numbers do not make)."""
    by = {r.name: r for r in records}
    base, plain = by.get("base"), by.get("finetune")
    if base is None or plain is None:
        return ["(the base model and the plain finetune are not measured yet)"]
    out = [
        f"Plain finetuning moves the trait score from {base.trait:.1f} (base) to "
        f"{plain.trait:.1f} ({plain.trait - base.trait:+.1f})."
    ]
    kept = [
        r
        for r in records
        if r.method == "prevent"
        and r.coherence >= COHERENCE_FLOOR
        and abs(r.trait - base.trait) <= 5.0
    ]
    best = min(kept, key=lambda r: abs(r.mc_accuracy - base.mc_accuracy), default=None)
    if not any(r.method == "prevent" for r in records):
        return [*out, "(no preventative finetune measured yet)"]
    out.append(
        f"Preventative α = {best.coef:g} keeps the trait at {best.trait:.1f} (base "
        f"{base.trait:.1f}) with coherence {best.coherence:.1f} and MC accuracy "
        f"{best.mc_accuracy * 100:.1f} % (base {base.mc_accuracy * 100:.1f} %)."
        if best
        else "No preventative coefficient keeps the trait within 5 points of the base at coherence "
        f">= {COHERENCE_FLOOR:g}."
    )
    out += _posthoc_vs_prevent(records, base)
    penalty = [r for r in records if r.method == "penalty"]
    prevent = [r for r in records if r.method == "prevent"]
    if penalty and prevent:
        p, q = min(penalty, key=lambda r: r.trait), min(prevent, key=lambda r: r.trait)
        verdict = "more" if p.trait > q.trait else "less"
        out.append(
            f"The projection penalty (best λ {p.coef:g}: trait {p.trait:.1f}) leaves "
            f"{verdict} of the trait than preventative steering (best α {q.coef:g}: "
            f"{q.trait:.1f})."
        )
    return out


def _posthoc_vs_prevent(records: Sequence[VariantRecord], base: VariantRecord) -> list[str]:
    prevent = [r for r in records if r.method == "prevent"]
    posthoc = [r for r in records if r.method == "posthoc"]
    if not prevent or not posthoc:
        return []
    out = []
    for q in prevent:
        match = [r for r in posthoc if r.trait <= q.trait + 2.0]
        if not match:
            continue
        r = max(match, key=lambda r: r.mc_accuracy)
        cost_p, cost_h = base.mc_accuracy - q.mc_accuracy, base.mc_accuracy - r.mc_accuracy
        out.append(
            f"To reach trait {q.trait:.1f} (preventative α {q.coef:g}, MC cost "
            f"{cost_p * 100:+.1f} points, perplexity {q.perplexity:.2f}), post-hoc subtraction "
            f"needs α {r.coef:g} (trait {r.trait:.1f}, MC cost {cost_h * 100:+.1f} points, "
            f"perplexity {r.perplexity:.2f}, coherence {r.coherence:.1f})."
        )
    return out or ["No post-hoc coefficient of the grid reaches a preventative trait score."]


def plot(records: Sequence[VariantRecord]) -> bytes:
    """Three panels against the coefficient: trait score, MC accuracy and perplexity (the usable
    capability measure where MC accuracy sits at chance); one line per method."""
    figure = new_figure(14.0, 3.8)
    panels = [
        ("trait score (0-100)", lambda r: r.trait),
        ("MC accuracy (%)", lambda r: r.mc_accuracy * 100),
        ("perplexity (held-out text)", lambda r: r.perplexity),
    ]
    base = next((r for r in records if r.method == "base"), None)
    plain = next((r for r in records if r.method == "finetune"), None)
    for index, (label, value) in enumerate(panels, start=1):
        ax = figure.add_subplot(1, len(panels), index)
        for method, name in (
            ("prevent", "preventative (+α in training)"),
            ("posthoc", "post-hoc (−α at inference)"),
        ):
            points = sorted((r.coef or 0.0, value(r)) for r in records if r.method == method)
            if plain is not None:
                points = [(0.0, value(plain)), *points]
            if points:
                ax.plot(
                    [p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=name
                )
        _references(ax, records, base, value)
        ax.set_xlabel("coefficient α")
        ax.set_ylabel(label)
        ax.legend(fontsize=7, loc="best")
    figure.suptitle("preventative vs post-hoc steering")
    return to_png(figure)


def _references(ax: Any, records: Sequence[VariantRecord], base: Any, value: Any) -> None:
    styles = {"base": ("black", "--"), "ablate": ("tab:green", ":"), "penalty": ("tab:red", "-.")}
    for r in records:
        if r.method in styles and (r.method != "base" or r is base):
            color, style = styles[r.method]
            label = r.name if r.method != "penalty" else f"penalty λ={r.coef:g}"
            ax.axhline(value(r), color=color, ls=style, lw=0.8, label=label)


def write_report(records: Sequence[VariantRecord], ctx: StudyContext, out: Path) -> Path:
    """Write ``report.md`` and the plot; returns the report's path."""
    atomic_write_bytes(out / PLOT, plot(records))
    s = ctx.settings
    lines = [
        f"# Prevention study: {ctx.vector.meta.trait} at layer {ctx.layer}",
        "",
        f"Base model `{ctx.base.model_id}`; dataset `{ctx.dataset}` ({len(ctx.rows)} rows); "
        f"vector `{ctx.vector.path}`; coefficients {'relative' if s.relative else 'raw'}, "
        f"positions {s.positions}. Finetune: {ctx.config}. Evaluation: {s.questions} held-out "
        f"questions × {s.samples} samples, {s.max_new_tokens} tokens, judge {s.judge}, "
        f"coherence {s.coherence_judge}. Capability: {len(ctx.capability.mc)} MC questions "
        f"({ctx.capability.mc_source}), perplexity on held-out text "
        f"({ctx.capability.text_source}). Shift: finetuned − base mean last-prompt-token "
        "activation along v̂ (none for post-hoc steering: its weights are the plain finetune's).",
        "",
        table(records),
        "",
        "## Findings",
        "",
        *[f"- {line}" for line in findings(records)],
        "",
        f"![trait and capability against the coefficient]({PLOT})",
        "",
    ]
    return atomic_write_text(out / "report.md", "\n".join(lines))

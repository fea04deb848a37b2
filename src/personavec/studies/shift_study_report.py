"""Correlations, scatter plot and Markdown report of a shift study (:mod:`.shift_study`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from personavec.metrics.stats import pearson
from personavec.runs.plots import new_figure, to_png
from personavec.store import atomic_write_bytes, atomic_write_json, atomic_write_text
from personavec.studies.shift_study_types import ModelRecord, StudySettings


def correlations(records: Sequence[ModelRecord], traits: Sequence[str]) -> dict[str, Any]:
    """Pearson r of shift vs trait score over the finetunes (the base is excluded).

    ``per_trait[T]``: shift along T's vector vs T's score; ``pooled``: all (finetune, T) pairs;
    ``cross_trait``: T's score vs the shift along another trait's vector (the baseline). A
    finetune that re-uses another's (byte-identical data, ``same_data_as``) counts once.
    """
    tuned = [r for r in records if r.dataset is not None and r.same_data_as is None]
    per_trait = {t: _r([r.shift[t] for r in tuned], [r.trait[t] for r in tuned]) for t in traits}
    pooled_x = [r.shift[t] for t in traits for r in tuned]
    pooled_y = [r.trait[t] for t in traits for r in tuned]
    cross_x = [r.shift[o] for t in traits for o in traits if o != t for r in tuned]
    cross_y = [r.trait[t] for t in traits for o in traits if o != t for r in tuned]
    return {
        "n_finetunes": len(tuned),
        "per_trait": per_trait,
        "pooled": _r(pooled_x, pooled_y),
        "cross_trait": _r(cross_x, cross_y) if cross_x else None,
    }


def _r(x: Sequence[float], y: Sequence[float]) -> float | None:
    value = pearson(x, y)
    return None if math.isnan(value) else value


def scatter_png(records: Sequence[ModelRecord], traits: Sequence[str]) -> bytes:
    """One panel per trait: shift along its vector (x) vs its score (y), a point per model."""
    fig = new_figure(4.2 * len(traits), 3.8)
    colours = {r.name: f"C{i}" for i, r in enumerate(records)}  # one colour per dataset
    markers = {None: "*", "normal": "o", "mild": "s", "strong": "^"}
    stats = correlations(records, traits)
    for index, trait in enumerate(traits):
        ax = fig.add_subplot(1, len(traits), index + 1)
        for r in records:
            if r.same_data_as is not None:
                continue
            ax.scatter(
                r.shift[trait],
                r.trait[trait],
                color=colours[r.name],
                marker=markers.get(r.level, "o"),
                s=70 if r.dataset is None else 45,
                label=r.name if r.dataset else "base (no finetune)",
            )
        value = stats["per_trait"][trait]
        ax.set_title(f"{trait}: r = {'n/a' if value is None else f'{value:.2f}'}")
        ax.set_xlabel(f"finetuning shift along the {trait} vector")
        ax.set_ylabel(f"{trait} score (0-100)")
        ax.axvline(0, color="0.8", lw=0.8)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    fig.axes[-1].legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    return to_png(fig)


def write_report(
    records: Sequence[ModelRecord], settings: StudySettings, run_dir: str | Path
) -> Path:
    """Write ``summary.json``, ``shift_study.png`` and ``report.md``; return the report path."""
    out = Path(run_dir)
    traits = list(settings.traits)
    stats = correlations(records, traits)
    atomic_write_json(
        out / "summary.json",
        {
            "settings": asdict(settings),
            "correlations": stats,
            "models": [asdict(r) for r in records],
        },
    )
    atomic_write_bytes(out / "shift_study.png", scatter_png(records, traits))
    return atomic_write_text(out / "report.md", _markdown(records, settings, stats))


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (format(value, spec))
    )


def _markdown(records: Sequence[ModelRecord], s: StudySettings, stats: dict[str, Any]) -> str:
    traits = list(s.traits)
    head = " | ".join(f"{t} score | {t} shift" for t in traits)
    lines = [
        "# Finetuning shift study",
        "",
        f"Datasets: traits {', '.join(traits)} × levels {', '.join(s.levels)}, {s.n} rows each. "
        f"Evaluation: {s.questions} held-out questions × {s.samples} samples, ≤ "
        f"{s.max_new_tokens} tokens, judge {s.judge}"
        + (f" ({s.judge_pairs} pairs)" if s.judge_pairs else "")
        + f", coherence {s.coherence_judge}. Shift: last-prompt-token activations over the same "
        "questions, finetuned − base, projected on each trait's unit vector at its layer.",
        "",
        f"| model | rows | train loss | {head} | coherence |",
        "|---|---:|---:|" + "---:|---:|" * len(traits) + "---:|",
    ]
    for r in records:
        if r.same_data_as is not None:
            lines.append(f"| {r.name} | same dataset as {r.same_data_as}, counted once |")
            continue
        cells = " | ".join(
            f"{_fmt(r.trait[t], '.1f')} | {_fmt(r.shift[t], '+.3f')}" for t in traits
        )
        coherence = sum(r.coherence.values()) / len(r.coherence)
        lines.append(
            f"| {r.name} | {r.rows or '–'} | {_fmt(r.train_loss, '.3f')} | {cells} | "
            f"{coherence:.1f} |"
        )
    lines += ["", f"Pearson r over {stats['n_finetunes']} finetunes (base excluded):", ""]
    for trait, value in stats["per_trait"].items():
        lines.append(f"- {trait}: shift along its own vector vs its score: r = {_fmt(value)}")
    lines.append(f"- pooled over traits: r = {_fmt(stats['pooled'])}")
    if stats["cross_trait"] is not None:
        lines.append(
            f"- cross-trait baseline (score vs another trait's shift): "
            f"r = {_fmt(stats['cross_trait'])}"
        )
    lines += ["", "![shift vs score](shift_study.png)", ""]
    return "\n".join(lines)

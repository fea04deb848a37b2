"""The judge check's outputs: per-answer scores, summary JSON, report.md and heat maps."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from personavec.judges.labelled import LabelledAnswer
from personavec.pipeline.judge_check_types import JudgeSummary, Scores
from personavec.runs.plots import score_matrix
from personavec.store import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
)


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def matrix_markdown(summary: JudgeSummary, traits: Sequence[str]) -> list[str]:
    """The cross-trait matrix as a Markdown table (rows: answers written to show X)."""
    lines = [
        "| answers showing ↓ / judge of → | " + " | ".join(traits) + " |",
        "|---|" + "---:|" * len(traits),
    ]
    for x in traits:
        cells = [
            f"**{_fmt(summary.matrix[x][y], 0)}**" if x == y else _fmt(summary.matrix[x][y], 0)
            for y in traits
        ]
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(summary: JudgeSummary, traits: Sequence[str]) -> list[str]:
    """AUROC and specificity per trait, with their means, as a Markdown table."""
    lines = ["| trait | AUROC (shows vs not) | specificity (vs other traits) |", "|---|---:|---:|"]
    for t in traits:
        lines.append(f"| {t} | {_fmt(summary.auroc[t])} | {_fmt(summary.specificity[t])} |")
    finite = [v for v in summary.auroc.values() if math.isfinite(v)]
    spec = [v for v in summary.specificity.values() if math.isfinite(v)]
    mean_a = sum(finite) / len(finite) if finite else math.nan
    mean_s = sum(spec) / len(spec) if spec else math.nan
    lines.append(f"| **mean** | **{_fmt(mean_a)}** | **{_fmt(mean_s)}** |")
    return lines


def write_report(
    run_dir: Path,
    rows: Sequence[LabelledAnswer],
    traits: Sequence[str],
    scores: Mapping[str, Mapping[str, Scores]],
    summaries: Mapping[str, JudgeSummary],
) -> list[Path]:
    """Write ``scores.jsonl``, ``summary.json``, ``report.md`` and ``matrix-<judge>.png``."""
    written: list[Path] = []
    records = [
        {**asdict(row), "scores": {j: {t: scores[j][t][k] for t in traits} for j in scores}}
        for k, row in enumerate(rows)
    ]
    written.append(atomic_write_jsonl(run_dir / "scores.jsonl", records))
    path = run_dir / "summary.json"
    atomic_write_json(
        path, {"traits": list(traits), "judges": {j: asdict(s) for j, s in summaries.items()}}
    )
    written.append(path)
    report = [
        "# Judge check",
        "",
        f"{len(rows)} labelled answers (held out from calibration), {len(traits)} traits.",
        "AUROC: answers written to show the trait vs answers to the same questions written not "
        "to. Specificity: the trait's answers vs the other traits' trait-showing answers, under "
        "the trait's judge. Matrix: mean 0-100 score of the column's judge on answers written "
        "to show the row's trait (high off the diagonal = the judge responds to other traits).",
    ]
    for judge, summary in summaries.items():
        name = "matrix-" + judge.replace(":", "_").replace("/", "_") + ".png"
        png = score_matrix(
            [[summary.matrix[x][y] for y in traits] for x in traits],
            traits,
            traits,
            title=f"{judge}: mean score by the column trait's judge",
            xlabel="judge of trait",
            ylabel="answers written to show",
        )
        atomic_write_bytes(run_dir / name, png)
        written.append(run_dir / name)
        report += ["", f"## {judge}", "", *summary_markdown(summary, traits), ""]
        report += [*matrix_markdown(summary, traits), "", f"![{judge}]({name})"]
        if summary.unscored:
            report += ["", f"{summary.unscored} judgments had no verdict (left out)."]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(report) + "\n")
    written.append(path)
    return written

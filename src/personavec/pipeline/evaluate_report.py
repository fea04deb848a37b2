"""The evaluation report: ``table.jsonl``, ``summary.json`` and ``report.md``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from personavec.pipeline.evaluate_types import CellResult, EvalResult, EvalSettings, Stat
from personavec.store import atomic_write_json, atomic_write_text


def write_evaluation(result: EvalResult, settings: EvalSettings) -> None:
    """``table.jsonl``, ``summary.json`` and ``report.md`` (each atomically)."""
    out = result.run_dir
    rows = [{**r, "steered": False} for r in result.baseline.rows]
    rows += [{**r, "steered": True} for r in result.steered.rows]
    atomic_write_text(
        out / "table.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    atomic_write_json(out / "summary.json", eval_summary(result, settings))
    atomic_write_text(out / "report.md", eval_report(result, settings))


def _stat_dict(stat: Stat) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(stat).items()
    }


def eval_summary(result: EvalResult, settings: EvalSettings) -> dict[str, Any]:
    def cell(c: CellResult) -> dict[str, Any]:
        return {
            "trait": _stat_dict(c.trait),
            "coherence": _stat_dict(c.coherence),
            "off_target": {k: _stat_dict(v) for k, v in c.off_target.items()},
        }

    steered = result.steered.cell
    return {
        "trait": result.trait,
        "layers": list(steered.layers),
        "coef": steered.coef,
        "relative": steered.unit == "relative",
        "positions": steered.positions,
        "op": steered.op,
        "settings": asdict(settings),
        "judge": result.judge,
        "steered": cell(result.steered),
        "baseline": cell(result.baseline),
        "trait_change": result.trait_change,
        "coherence_change": result.coherence_change,
        "off_target_change": {
            k: v.mean - result.baseline.off_target[k].mean
            for k, v in result.steered.off_target.items()
        },
        "capability": result.capability,
    }


def _quote(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else text


def eval_report(result: EvalResult, settings: EvalSettings) -> str:
    s, b = result.steered, result.baseline
    lines = [
        f"# Steering evaluation: {result.trait}",
        "",
        f"- Setting: {s.cell.label()}",
        f"- Questions: {len(s.rows) // max(settings.samples, 1)} held-out × {settings.samples} "
        f"samples, ≤ {settings.max_new_tokens} new tokens, temperature {settings.temperature:g}, "
        f"seed {settings.seed} (the baseline uses the same questions and seeds)",
        f"- Judges: {result.judge}",
        "",
        "| | trait (mean [95 % CI]) | trait std | coherence (mean [95 % CI]) | coherence std |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in (("unsteered", b), ("steered", s)):
        lines.append(
            f"| {name} | {c.trait.text()} | {c.trait.std:.1f} | {c.coherence.text()} | "
            f"{c.coherence.std:.1f} |"
        )
    lines += [
        "",
        f"Trait change **{result.trait_change:+.1f}**, coherence change "
        f"{result.coherence_change:+.1f}"
        + (" (below the paper's 75 floor)" if s.coherence.mean < 75 else "")
        + ".",
        "",
    ]
    if s.off_target:
        lines += ["## Off-target traits (same answers, other judges)", ""]
        lines += ["| trait | unsteered | steered | change |", "|---|---:|---:|---:|"]
        for name, stat in s.off_target.items():
            base = b.off_target[name]
            lines.append(
                f"| {name} | {base.mean:.1f} | {stat.mean:.1f} | {stat.mean - base.mean:+.1f} |"
            )
        lines.append("")
    if result.capability:
        cap = result.capability
        lines += [
            "## Capability (multiple choice)",
            "",
            f"{cap['questions']} questions from `{cap['file']}`: accuracy "
            f"{cap['baseline_accuracy']:.3f} unsteered, {cap['steered_accuracy']:.3f} steered "
            f"({cap['change']:+.3f}; {cap.get('scoring', 'letter')} scoring).",
            "",
        ]
    lines += ["## Examples", ""]
    for base_row, steered_row in list(zip(b.rows, s.rows, strict=True))[:3]:
        lines += [
            f"*{_quote(base_row['question'], 120)}*",
            "",
            f"- unsteered (trait {_fmt(base_row.get('trait'))}): {_quote(base_row['answer'])}",
            f"- steered (trait {_fmt(steered_row.get('trait'))}): {_quote(steered_row['answer'])}",
            "",
        ]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"

"""The monitor-sweep report: ``summary.json``, ``scatter.png`` and ``report.md``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personavec.core.vector import PersonaVector
from personavec.metrics.stats import pearson
from personavec.pipeline.monitor_sweep_types import MonitorSweepConfig
from personavec.runs.plots import ScatterGroup, ScatterPanel, scatter_panels
from personavec.store import atomic_write_bytes, atomic_write_json, atomic_write_text
from personavec.traits.schema import TraitSpec


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _group_stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    proj = [r["projection"] for r in rows]
    scores = [r["score"] for r in rows]
    return {
        "n": len(rows),
        "mean_projection": float(np.mean(proj)) if proj else None,
        "mean_score": float(np.mean(scores)) if scores else None,
        "pearson_r": _finite(pearson(proj, scores)),
    }


def _demeaned_r(groups: Sequence[Sequence[dict[str, Any]]]) -> float | None:
    """Pearson r after removing each group's mean: the pooled within-configuration signal."""
    proj: list[float] = []
    scores: list[float] = []
    for group in groups:
        if not group:
            continue
        p = np.array([r["projection"] for r in group], dtype=np.float64)
        s = np.array([r["score"] for r in group], dtype=np.float64)
        proj += (p - p.mean()).tolist()
        scores += (s - s.mean()).tolist()
    return _finite(pearson(proj, scores))


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Correlations overall, within each configuration and between configuration means.

    Rows whose answer got no score (empty answer, refusal) are left out.
    """
    scored = [r for r in rows if r.get("score") is not None]
    out: dict[str, Any] = {
        "rows": len(rows),
        "scored_rows": len(scored),
        "overall": _group_stats(scored),
    }
    for kind, label in (("ladder", "ladder"), ("many_shot", "many_shot")):
        levels = sorted({r["level"] for r in rows if r["kind"] == kind})
        if not levels:
            continue
        groups = {
            lv: [r for r in scored if r["kind"] == kind and r["level"] == lv] for lv in levels
        }
        per_level = {str(lv): _group_stats(g) for lv, g in groups.items()}
        filled = [s for s in per_level.values() if s["n"]]
        mean_proj = [s["mean_projection"] for s in filled]
        mean_score = [s["mean_score"] for s in filled]
        all_proj = [r["projection"] for r in rows if r["kind"] == kind]
        all_level = [r["level"] for r in rows if r["kind"] == kind]
        within = [s["pearson_r"] for s in per_level.values() if s["pearson_r"] is not None]
        out[label] = {
            "levels": levels,
            "per_level": per_level,
            "all": _group_stats([r for r in scored if r["kind"] == kind]),
            "mean_projection_vs_mean_score_r": _finite(pearson(mean_proj, mean_score)),
            "level_vs_projection_r": _finite(pearson(all_level, all_proj)),
            "within_level_pooled_r": _demeaned_r(list(groups.values())),
            "within_level_mean_r": float(np.mean(within)) if within else None,
        }
    config_groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in scored:
        config_groups.setdefault((r["kind"], r["level"]), []).append(r)
    config_means = [_group_stats(g) for g in config_groups.values()]
    out["config_means_r"] = _finite(
        pearson(
            [m["mean_projection"] for m in config_means], [m["mean_score"] for m in config_means]
        )
    )
    out["within_config_pooled_r"] = _demeaned_r(list(config_groups.values()))
    return out


_TITLES = {"ladder": "system-prompt ladder", "many_shot": "many-shot prompts"}


def _panel(rows: Sequence[dict[str, Any]], kind: str) -> ScatterPanel:
    scored = [r for r in rows if r["kind"] == kind and r.get("score") is not None]
    levels = sorted({r["level"] for r in rows if r["kind"] == kind})
    groups = []
    for level in levels:
        points = [r for r in scored if r["level"] == level]
        label = f"level {level}" if kind == "ladder" else f"k = {level}"
        groups.append(
            ScatterGroup(label, [r["projection"] for r in points], [r["score"] for r in points])
        )
    r_value = pearson([r["projection"] for r in scored], [r["score"] for r in scored])
    r_text = f"r = {r_value:.2f}" if math.isfinite(r_value) else "r = n/a"
    columns = 2 if kind == "ladder" else 1
    return ScatterPanel(f"{_TITLES[kind]} ({r_text})", groups, legend_columns=columns)


def _plot(rows: Sequence[dict[str, Any]], trait: str, layer: int) -> bytes:
    kinds = [k for k in ("ladder", "many_shot") if any(r["kind"] == k for r in rows)]
    return scatter_panels(
        [_panel(rows, kind) for kind in kinds],
        xlabel=f"last-prompt-token projection (layer {layer})",
        ylabel=f"{trait} score",
        title=f"{trait}: projection before answering vs judged trait of the answer",
    )


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _quote(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…") if len(text) > limit else text


def write_report(
    run_dir: Path,
    rows: Sequence[dict[str, Any]],
    config: MonitorSweepConfig,
    trait: TraitSpec,
    vector: PersonaVector,
    judge_identity: str,
) -> dict[str, Any]:
    """Write ``summary.json``, ``scatter.png`` and ``report.md``; return the summary."""
    assert config.layer is not None
    stats = summarize(rows)
    summary = {
        "trait": trait.name,
        "model": vector.meta.model_id,
        "vector": str(vector.path) if vector.path else None,
        "layer": config.layer,
        "readout": config.readout,
        "judge": judge_identity,
        "questions": config.n_questions,
        "samples": config.samples,
        "max_new_tokens": config.max_new_tokens,
        "ladder": config.ladder,
        "shots": config.shots,
        **stats,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_bytes(run_dir / "scatter.png", _plot(rows, trait.name, config.layer))
    lines = _overview(stats, config, trait, vector, judge_identity)
    for kind in ("ladder", "many_shot"):
        if stats.get(kind) is not None:
            lines += _kind_section(kind, stats[kind], config.ladder or [])
    lines += [
        "Within one configuration the prompt is fixed up to the question, so the projection "
        "varies much less and the correlation is expected to be weaker than across "
        "configurations (the paper reports the same).",
    ]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return summary


def _overview(
    stats: dict[str, Any],
    config: MonitorSweepConfig,
    trait: TraitSpec,
    vector: PersonaVector,
    judge_identity: str,
) -> list[str]:
    overall = stats["overall"]
    return [
        f"# Monitoring sweep: {trait.name}",
        "",
        "Does the last prompt token's projection onto the persona vector, read *before* the model "
        "answers, predict how strongly the answer shows the trait?",
        "",
        f"- Model: `{vector.meta.model_id}`; vector layer {config.layer} "
        f"(readout `{config.readout}`)",
        f"- Judge: {judge_identity}",
        f"- {config.n_questions} evaluation questions × {config.samples} sample(s) per prompt "
        f"configuration, ≤ {config.max_new_tokens} new tokens, temperature {config.temperature:g}",
        f"- Scored answers: {stats['scored_rows']} of {stats['rows']}",
        "",
        f"**Overall Pearson r = {_fmt(overall['pearson_r'])}** (n = {overall['n']}); "
        f"between configuration means r = {_fmt(stats['config_means_r'])}; pooled within "
        f"configurations r = {_fmt(stats['within_config_pooled_r'])}.",
        "",
        "![scatter](scatter.png)",
        "",
    ]


def _kind_section(kind: str, block: dict[str, Any], ladder: Sequence[str]) -> list[str]:
    names = {"ladder": ("System-prompt ladder", "level"), "many_shot": ("Many-shot", "k")}
    title, column = names[kind]
    lines = [
        f"## {title}",
        "",
        f"- r over all its answers: {_fmt(block['all']['pearson_r'])} (n = {block['all']['n']})",
        f"- mean projection vs mean score across {column}s: "
        f"{_fmt(block['mean_projection_vs_mean_score_r'])}",
        f"- {column} vs projection: {_fmt(block['level_vs_projection_r'])}",
        f"- within one {column} (pooled after removing each {column}'s mean): "
        f"{_fmt(block['within_level_pooled_r'])}",
        "",
        f"| {column} | n | mean projection | mean score | r within |"
        + (" system prompt |" if kind == "ladder" else ""),
        "|---:|---:|---:|---:|---:|" + ("---|" if kind == "ladder" else ""),
    ]
    for level, s in block["per_level"].items():
        row = (
            f"| {level} | {s['n']} | {_fmt(s['mean_projection'])} | "
            f"{_fmt(s['mean_score'], 1)} | {_fmt(s['pearson_r'])} |"
        )
        if kind == "ladder":
            text = ladder[int(level)] if int(level) < len(ladder) else ""
            row += f" {_quote(text) if text else '*(none: model default)*'} |"
        lines.append(row)
    return [*lines, ""]

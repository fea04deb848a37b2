"""Summary, histogram and readable report of a finished screening run."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personavec.runs.plots import HistogramPanel, Rule, histograms
from personavec.screening.data import Sample, iter_samples
from personavec.screening.score import Mode, Target, score_column
from personavec.screening.stats import agreement, describe, subsample_estimates
from personavec.screening.table import column_values, iter_scores
from personavec.store import atomic_write_bytes, atomic_write_text

SUBSAMPLE_SIZES = (50, 100, 200, 500, 1000)


def summarize(scores: str | Path, targets: Sequence[Target], mode: Mode) -> dict[str, Any]:
    """Per vector: ΔP statistics and, in full mode, how the cheap modes agree with ΔP."""
    out: dict[str, Any] = {"mode": mode, "vectors": {}}
    for target in targets:
        main = column_values(scores, score_column(target, mode))
        entry: dict[str, Any] = {"layer": target.layer, "column": score_column(target, mode)}
        entry["delta"] = describe(main)
        if mode == "full":
            cheap = column_values(scores, target.column("delta_prompt"))
            prompt_last = column_values(scores, target.column("prompt_last"))
            entry["agreement"] = {
                "delta_prompt": agreement(main, cheap),
                "prompt_last": agreement(main, prompt_last),
            }
            entry["subsamples"] = subsample_estimates(main, SUBSAMPLE_SIZES)
        out["vectors"][target.column("")[:-1]] = entry
    return out


def extremes(
    scores: str | Path, column: str, k: int = 5
) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
    """The ``k`` highest and lowest ``(value, index)`` of a column (streaming, O(k) memory)."""
    top: list[tuple[float, int]] = []
    bottom: list[tuple[float, int]] = []
    for row in iter_scores(scores):
        value = row.get(column)
        if value is None or not np.isfinite(value):
            continue
        item = (float(value), int(row["index"]))
        (heapq.heappush if len(top) < k else heapq.heappushpop)(top, item)
        neg = (-item[0], item[1])
        (heapq.heappush if len(bottom) < k else heapq.heappushpop)(bottom, neg)
    return sorted(top, reverse=True), sorted((-v, i) for v, i in bottom)


def fetch_samples(data: str | Path, indices: set[int]) -> dict[int, Sample]:
    """The samples at ``indices`` (one streaming pass over the data)."""
    found: dict[int, Sample] = {}
    for item in iter_samples(data):
        if item.index in indices and isinstance(item, Sample):
            found[item.index] = item
    return found


def histogram_png(
    scores: str | Path,
    targets: Sequence[Target],
    mode: Mode,
    limits: Mapping[str, float] | None = None,
) -> bytes:
    """PNG of one ΔP histogram per vector (mean and, when given, threshold lines)."""
    panels = []
    for target in targets:
        column = score_column(target, mode)
        values = column_values(scores, column)
        values = values[np.isfinite(values)]
        rules = [Rule("mean", x=float(values.mean()), color="black")] if values.size else []
        if limits and column in limits:
            rules.append(Rule("threshold", x=limits[column], color="#c44e52", style="-"))
        xlabel = "ΔP" if mode == "full" else "ΔP (last-prompt approximation)"
        title = f"{target.name} (layer {target.layer})"
        panels.append(HistogramPanel(title, xlabel, values.tolist(), rules))
    return histograms(panels)


def _clip(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _sample_lines(sample: Sample | None, value: float, own: str | None) -> list[str]:
    if sample is None:
        return [f"- ΔP {value:+.3f}: (row not found)"]
    user = next(m["content"] for m in reversed(sample.example.messages) if m["role"] == "user")
    lines = [f"- **{value:+.3f}** id `{sample.id}` (row {sample.index})"]
    lines.append(f"  - prompt: {_clip(user)}")
    lines.append(f"  - response: {_clip(sample.example.response)}")
    if own is not None:
        lines.append(f"  - model's own: {_clip(own)}")
    return lines


def _own_texts(scores: str | Path, indices: set[int]) -> dict[int, str]:
    return {
        int(r["index"]): str(r["own_response"])
        for r in iter_scores(scores)
        if int(r["index"]) in indices and r.get("own_response") is not None
    }


def write_report(
    run_dir: str | Path,
    data: str | Path,
    targets: Sequence[Target],
    mode: Mode,
    summary: Mapping[str, Any],
    *,
    k: int = 5,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``report.md``: ΔP per vector, agreement of the cheap modes, top/bottom samples."""
    directory = Path(run_dir)
    scores = directory / "scores.jsonl"
    lines = [f"# Screening report: {data}", "", f"Mode: **{mode}**.", ""]
    lines += list(notes) + ([""] if notes else [])
    ends = {t.name + str(t.layer): extremes(scores, score_column(t, mode), k) for t in targets}
    wanted = {i for top, bottom in ends.values() for _, i in top + bottom}
    samples = fetch_samples(data, wanted)
    own = _own_texts(scores, wanted) if mode == "full" else {}
    for target in targets:
        entry = summary["vectors"][target.column("")[:-1]]
        d = entry["delta"]
        lines += [f"## {target.name}, layer {target.layer}", ""]
        lines.append(
            f"Dataset ΔP = **{d['mean']:.4f}** (95 % CI {d['low']:.4f} … {d['high']:.4f}, "
            f"n = {d['n']}; p5 {d['p5']:.3f}, median {d['p50']:.3f}, p95 {d['p95']:.3f})."
        )
        lines.append("")
        for name, a in entry.get("agreement", {}).items():
            lines.append(
                f"- `{name}` vs ΔP: Pearson r {a['pearson']:.3f}, Spearman {a['spearman']:.3f}, "
                f"top-5 % overlap {a['top5_overlap']:.2f} (n = {a['n']})"
            )
        for s in entry.get("subsamples", []):
            lines.append(
                f"- subsample of {s['size']}: {s['mean']:.4f} ({s['low']:.4f} … {s['high']:.4f}); "
                f"error {s['error']:+.4f}, interval {'covers' if s['covers'] else 'misses'} "
                "the full mean"
            )
        top, bottom = ends[target.name + str(target.layer)]
        for title, items in (("Highest ΔP", top), ("Lowest ΔP", bottom)):
            lines += ["", f"### {title}", ""]
            for value, index in items:
                lines += _sample_lines(samples.get(index), value, own.get(index))
        lines.append("")
    lines += ["![ΔP histogram](histogram.png)", ""]
    return atomic_write_text(directory / "report.md", "\n".join(lines))


def write_histogram(
    run_dir: str | Path,
    targets: Sequence[Target],
    mode: Mode,
    limits: Mapping[str, float] | None = None,
) -> Path:
    """Write ``histogram.png`` into the run directory."""
    directory = Path(run_dir)
    png = histogram_png(directory / "scores.jsonl", targets, mode, limits)
    return atomic_write_bytes(directory / "histogram.png", png)

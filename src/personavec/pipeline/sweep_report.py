"""The sweep report: two PNG plots, a self-contained ``report.html`` and ``summary.json``.

The report depends on the sweep's result types (:mod:`personavec.pipeline.sweep_types`), never
on the sweep itself.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import asdict
from typing import Any

from personavec.pipeline.sweep_types import SweepResult, recommended_coef
from personavec.runs.plots import Line, Rule, line_chart
from personavec.store import atomic_write_bytes, atomic_write_json, atomic_write_text


def _plot(result: SweepResult, attribute: str, ylabel: str, floor: float | None) -> bytes:
    several = len({c.positions for c in result.curves}) > 1
    lines = [
        Line(
            f"layer {curve.layer}" + (f" ({curve.positions})" if several else ""),
            curve.coefs,
            getattr(curve, attribute),
            2.2 if (curve.layer, curve.positions) == (result.layer, result.positions) else 1.0,
        )
        for curve in result.curves
    ]
    rules = [] if floor is None else [Rule(f"floor {floor:g}", y=floor)]
    cal = result.calibration
    if attribute == "trait" and cal is not None and cal.coef is not None:
        rules.append(Rule(f"calibrated {cal.coef:+.3g}", x=cal.coef, color="tab:red", style=":"))
    return line_chart(
        lines,
        xlabel=("relative" if result.relative else "raw") + " coefficient",
        ylabel=ylabel,
        title=f"{result.trait}: {ylabel} vs coefficient",
        ylim=(-2, 102),
        rules=rules,
        dpi=100,
    )


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def sweep_summary(result: SweepResult) -> dict[str, Any]:
    return _clean(
        {
            "trait": result.trait,
            "judge": result.judge,
            "relative": result.relative,
            "coherence_floor": result.coherence_floor,
            "reference_coef": result.reference_coef,
            "recommended_layer": result.layer,
            "recommended_positions": result.positions,
            "recommended_coef": recommended_coef(result),
            "calibration": None if result.calibration is None else asdict(result.calibration),
            "baseline": {
                "trait": result.baseline.trait.mean,
                "coherence": result.baseline.coherence.mean,
            },
            "curves": [asdict(c) for c in result.curves],
            "new_tokens": result.new_tokens,
            "generation_s": result.generation_s,
            "tokens_per_s": result.tokens_per_s,
            "settings": result.settings,
            "vector_file": None if result.vector_written is None else str(result.vector_written),
        }
    )


def _table(result: SweepResult, attribute: str) -> str:
    coefs = result.curves[0].coefs
    head = "".join(f"<th>{c:+g}</th>" for c in coefs)
    rows = []
    for curve in result.curves:
        cells = "".join(f"<td>{v:.1f}</td>" for v in getattr(curve, attribute))
        mark = " ★" if (curve.layer, curve.positions) == (result.layer, result.positions) else ""
        rows.append(
            f"<tr><th>{curve.layer} ({html.escape(curve.positions)}){mark}</th>{cells}</tr>"
        )
    return f"<table><tr><th>layer \\ coef</th>{head}</tr>{''.join(rows)}</table>"


def write_sweep_report(result: SweepResult) -> None:
    """Write the plots, ``report.html`` and ``summary.json`` into ``result.run_dir``."""
    out = result.run_dir
    trait_png = _plot(result, "trait", "trait score", None)
    coherence_png = _plot(result, "coherence", "coherence", result.coherence_floor)
    atomic_write_bytes(out / "trait_vs_coef.png", trait_png)
    atomic_write_bytes(out / "coherence_vs_coef.png", coherence_png)
    summary = sweep_summary(result)
    atomic_write_json(out / "summary.json", summary)

    def img(data: bytes, alt: str) -> str:
        encoded = base64.b64encode(data).decode()
        return f'<img alt="{alt}" src="data:image/png;base64,{encoded}">'

    cal = result.calibration
    unit = "relative (fraction of typical residual norm)" if result.relative else "raw"
    coef = recommended_coef(result)
    lines = [
        f"<p>Baseline (unsteered): trait {result.baseline.trait.text()}, coherence "
        f"{result.baseline.coherence.text()}.</p>",
        f"<p>Reference coefficient for the layer choice: {result.reference_coef:+g} ({unit}); "
        f"chosen layer <b>{result.layer}</b> ({html.escape(result.positions)} positions).</p>",
    ]
    if cal is not None:
        verdict = (
            f"<b>{cal.coef:+.4g}</b> (predicted trait {cal.predicted_trait:.1f}, coherence "
            f"{cal.predicted_coherence:.1f})"
            if cal.coef is not None
            else f"<b>none</b>: {html.escape(cal.reason)}"
        )
        lines.append(
            f"<p>Calibration to trait {cal.target_trait:.1f} with coherence ≥ "
            f"{result.coherence_floor:g}: {verdict}.</p>"
        )
    lines.append(
        f"<p>Recommended coefficient written to the vector: "
        f"{'none' if coef is None else f'{coef:+.4g}'}"
        f"{'' if result.vector_written else ' (not written: --no-write)'}.</p>"
    )
    lines.append(
        f"<p>Generation: {result.new_tokens} new tokens in {result.generation_s:.1f} s "
        f"({result.tokens_per_s:.1f} tokens/s). Judges: {html.escape(result.judge)}.</p>"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>personavec sweep: {html.escape(result.trait)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;
text-align:right}}img{{max-width:49%}}</style></head><body>
<h1>Steering sweep: {html.escape(result.trait)}</h1>
{"".join(lines)}
<div>{img(trait_png, "trait vs coefficient")} {img(coherence_png, "coherence vs coefficient")}</div>
<h2>Mean trait score</h2>{_table(result, "trait")}
<h2>Mean coherence</h2>{_table(result, "coherence")}
</body></html>
"""
    atomic_write_text(out / "report.html", page)

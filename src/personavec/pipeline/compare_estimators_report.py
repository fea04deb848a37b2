"""The ``compare-estimators`` report: ``report.md`` with one row per (layer, estimator), the
cosines between estimators, and two plots (``separation.png``, ``steering.png``)."""

from __future__ import annotations

import math

from personavec.pipeline.compare_estimators_types import CompareResult, EstimatorRow
from personavec.runs.plots import Line, Rule, line_chart
from personavec.store import atomic_write_bytes, atomic_write_text


def _f(value: float, spec: str = ".2f") -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _row(row: EstimatorRow) -> str:
    up, down = row.toward, row.away
    cells = [
        str(row.layer),
        row.estimator,
        _f(row.auroc),
        _f(row.cohens_d),
        _f(up.trait_change, "+.1f"),
        _f(down.trait_change, "+.1f"),
        _f(up.coherence, ".1f") + " / " + _f(down.coherence, ".1f"),
        _f(up.relevance_ratio) + " / " + _f(down.relevance_ratio),
        _f(up.harmonic, ".3f") + " / " + _f(down.harmonic, ".3f"),
    ]
    return "| " + " | ".join(cells) + " |"


def report_markdown(result: CompareResult) -> str:
    """The report's text (markdown)."""
    base = result.baseline
    held = result.heldout
    lines = [
        f"# Estimators compared: {result.trait}",
        "",
        f"Layers {', '.join(map(str, result.layers))}; strength ±{result.coef:g} × the layer's "
        "typical residual norm (the same added norm for every estimator).",
        f"Unsteered: trait {_f(base['trait'], '.1f')}, coherence {_f(base['coherence'], '.1f')}, "
        f"relevance {_f(base['relevance'], '.1f')}. Held-out separation answers: "
        f"{held.get('exhibiting', 0)} exhibiting, {held.get('not_exhibiting', 0)} not "
        f"({held.get('unscored', 0)} unscored).",
        f"Judges: {result.judge}.",
        "",
        "| layer | estimator | AUROC | Cohen's d | Δtrait + | Δtrait − | coherence + / − "
        "| relevance ratio + / − | harmonic + / − |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        *[_row(row) for row in result.rows],
        "",
        "Cosine between estimators:",
        "",
        "| layer | " + " | ".join(next(iter(result.cosines.values()), {})) + " |",
        "|---:|" + "---:|" * len(next(iter(result.cosines.values()), {})),
        *[
            f"| {layer} | " + " | ".join(_f(v, ".3f") for v in pairs.values()) + " |"
            for layer, pairs in result.cosines.items()
        ],
        "",
        "Best on average over these layers: "
        + ", ".join(f"{use}: **{name}**" for use, name in result.recommended().items())
        + ".",
        "",
        "Separation: AUROC and Cohen's d of the held-out answers' projections, judged exhibiting "
        "vs not. Δtrait ±: judged trait change steering towards (+) and away from (−) the trait. "
        "Relevance ratio: question-answer embedding similarity relative to the unsteered "
        "answers. Harmonic: AxBench-style harmonic mean of the directed trait change / 100, "
        "coherence / 100 and the relevance ratio (0..1).",
        "",
        "![separation](separation.png) ![steering](steering.png)",
        "",
        *_separation_table(result),
    ]
    return "\n".join(lines)


def _separation_table(result: CompareResult) -> list[str]:
    """Held-out AUROC (Cohen's d) of every estimator at every layer."""
    if not result.separation:
        return []
    cell = {(s.layer, s.estimator): s for s in result.separation}
    layers = sorted({s.layer for s in result.separation})
    return [
        "Held-out separation at every layer, AUROC (Cohen's d):",
        "",
        "| layer | " + " | ".join(result.estimators) + " |",
        "|---:|" + "---:|" * len(result.estimators),
        *[
            f"| {layer} | "
            + " | ".join(
                f"{_f(cell[(layer, e)].auroc)} ({_f(cell[(layer, e)].cohens_d)})"
                for e in result.estimators
            )
            + " |"
            for layer in layers
        ],
        "",
    ]


def _lines(result: CompareResult, value: str) -> list[Line]:
    def get(row: EstimatorRow) -> float:
        return float(row.auroc if value == "auroc" else row.toward.trait_change)

    if value == "auroc" and result.separation:
        return [
            Line(
                name,
                [s.layer for s in result.separation if s.estimator == name],
                [s.auroc for s in result.separation if s.estimator == name],
            )
            for name in result.estimators
        ]
    return [
        Line(
            name,
            [r.layer for r in result.rows if r.estimator == name],
            [get(r) for r in result.rows if r.estimator == name],
        )
        for name in result.estimators
    ]


def write_compare_report(result: CompareResult) -> None:
    """Write ``report.md``, ``separation.png`` and ``steering.png`` into the run directory."""
    out = result.run_dir
    atomic_write_bytes(
        out / "separation.png",
        line_chart(
            _lines(result, "auroc"),
            xlabel="layer",
            ylabel="held-out AUROC",
            title=f"{result.trait}: separation by estimator",
            ylim=(0.0, 1.02),
            rules=[Rule("chance", y=0.5)],
            integer_x=True,
        ),
    )
    atomic_write_bytes(
        out / "steering.png",
        line_chart(
            _lines(result, "trait_change"),
            xlabel="layer",
            ylabel=f"trait change at +{result.coef:g} (relative)",
            title=f"{result.trait}: steering by estimator",
            rules=[Rule(y=0.0)],
            integer_x=True,
        ),
    )
    result.report_path = out / "report.md"
    atomic_write_text(result.report_path, report_markdown(result))

"""Plots render PNGs without changing matplotlib's backend or importing pyplot."""

from __future__ import annotations

import subprocess
import sys

from personavec.runs.plots import (
    HistogramPanel,
    Line,
    Rule,
    ScatterGroup,
    ScatterPanel,
    heatmap,
    histograms,
    line_chart,
    scatter_panels,
    separation_chart,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_plot_is_a_png() -> None:
    pngs = [
        line_chart(
            [Line("a", [0, 1, 2], [0.1, 0.5, 0.9], width=2.2), Line("b", [0, 1], [1.0, 0.0])],
            xlabel="coef",
            ylabel="score",
            title="t",
            rules=[Rule("floor", y=0.5), Rule("chosen", x=1.0, style=":")],
            integer_x=True,
        ),
        line_chart([], xlabel="x", ylabel="y", title="empty", legend_outside=True),
        separation_chart(
            [0, 1, 2],
            [0.5, 0.8, 0.9],
            [0.0, 1.2, 2.0],
            [0.0, 0.1, 0.2],
            suggested_layer=1,
            trait="evil",
        ),
        scatter_panels(
            [ScatterPanel("p", [ScatterGroup("L0", [0.1, 0.2], [10, 20])]), ScatterPanel("q")],
            xlabel="x",
            ylabel="y",
            title="t",
        ),
        heatmap(
            [[1.0, float("nan")], [-0.7, 0.2]],
            ["r1", "r2"],
            ["c1", "c2"],
            title="t",
            colorbar_label="r",
            boxes=[[True, False], [False, True]],
        ),
        histograms(
            [
                HistogramPanel("a", "ΔP", [0.1, 0.2, float("nan"), 0.4], [Rule("mean", x=0.2)]),
                HistogramPanel("empty", "ΔP", []),
            ]
        ),
    ]
    for png in pngs:
        assert png.startswith(PNG) and len(png) > 1000


def test_only_the_plots_module_draws() -> None:
    """Every figure goes through personavec.runs.plots: no other module imports matplotlib."""
    from pathlib import Path

    import personavec

    root = Path(personavec.__file__).parent
    drawing = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "matplotlib" in path.read_text(encoding="utf-8")
    )
    assert drawing == ["runs/plots.py"]


def test_plotting_leaves_the_backend_and_pyplot_alone() -> None:
    """A notebook user's backend must survive personavec writing a report."""
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from personavec.runs.plots import Line, line_chart\n"
        "line_chart([Line('a', [0, 1], [0, 1])], xlabel='x', ylabel='y', title='t')\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split() == ["svg", "False"]

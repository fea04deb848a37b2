"""Every plot personavec writes, as PNG bytes, without touching matplotlib's global state.

Each function builds its own :class:`matplotlib.figure.Figure`, draws on it and renders it with
the Agg canvas. ``pyplot`` and ``matplotlib.use`` are never called, so a notebook's backend and
open figures stay as they were. Inputs are plain numbers and labels, so any pipeline (or a user)
can draw with them; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class Line:
    """One series of a line chart; ``width`` > 1 highlights it."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    width: float = 1.0


@dataclass
class Rule:
    """A dashed reference line: horizontal at ``y`` or vertical at ``x`` (one of the two)."""

    label: str | None = None
    x: float | None = None
    y: float | None = None
    color: str = "grey"
    style: str = "--"


@dataclass
class ScatterGroup:
    """Points of one colour in a scatter panel."""

    label: str
    x: Sequence[float]
    y: Sequence[float]


@dataclass
class ScatterPanel:
    """One scatter panel; groups are coloured along a blue-to-red scale, in order."""

    title: str
    groups: list[ScatterGroup] = field(default_factory=list)
    legend_columns: int = 1


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches attached to an Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def to_png(figure: Figure, dpi: int = 110) -> bytes:
    """Lay out and render ``figure`` as PNG bytes."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _draw_rules(ax: Axes, rules: Sequence[Rule]) -> None:
    for rule in rules:
        style: dict[str, Any] = {"color": rule.color, "lw": 0.8, "ls": rule.style}
        if rule.y is not None:
            ax.axhline(rule.y, label=rule.label, **style)
        if rule.x is not None:
            ax.axvline(rule.x, label=rule.label, **style)


def line_chart(
    lines: Sequence[Line],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    ylim: tuple[float, float] | None = None,
    rules: Sequence[Rule] = (),
    integer_x: bool = False,
    legend_outside: bool = False,
    empty_text: str = "nothing to plot",
    size: tuple[float, float] = (6.0, 3.8),
    dpi: int = 110,
) -> bytes:
    """Lines with small markers, optional reference lines; PNG bytes."""
    figure = new_figure(*size)
    ax = figure.add_subplot()
    for line in lines:
        ax.plot(line.x, line.y, marker="o", ms=3, lw=line.width, label=line.label)
    if not lines:
        ax.text(0.5, 0.5, empty_text, ha="center", transform=ax.transAxes)
    _draw_rules(ax, rules)
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if any(line.label for line in lines) or any(rule.label for rule in rules):
        if legend_outside:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            ax.legend(fontsize=7, loc="best")
    return to_png(figure, dpi)


def separation_chart(
    layers: Sequence[int],
    auroc: Sequence[float],
    cohens_d: Sequence[float],
    norm_ratio: Sequence[float],
    *,
    suggested_layer: int,
    trait: str,
) -> bytes:
    """Extraction: held-out AUROC and Cohen's d per layer, and ‖v‖ / typical residual norm."""
    figure = new_figure(10, 3.6)
    ax1, ax2 = figure.subplots(1, 2)
    ax1.plot(layers, auroc, marker="o", ms=3, label="AUROC")
    ax1.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax1.set_ylim(0.0, 1.02)
    ax1.set_xlabel("layer")
    ax1.set_ylabel("held-out AUROC")
    twin = ax1.twinx()
    twin.plot(layers, cohens_d, color="tab:orange", marker=".", ms=3)
    twin.set_ylabel("Cohen's d", color="tab:orange")
    ax1.axvline(suggested_layer, color="tab:green", lw=1, label="suggested layer")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title(f"{trait}: pos vs neg projections")
    ax2.plot(layers, norm_ratio, marker="o", ms=3, color="tab:purple")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("‖v‖ / typical residual norm")
    ax2.set_title("vector size relative to the residual stream")
    return to_png(figure)


def scatter_panels(
    panels: Sequence[ScatterPanel],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    ylim: tuple[float, float] = (-3, 103),
) -> bytes:
    """Side-by-side scatter panels (one per prompt family, say); PNG bytes."""
    from matplotlib import colormaps

    count = max(1, len(panels))
    figure = new_figure(5.2 * count, 4.2)
    axes = figure.subplots(1, count, squeeze=False)[0]
    cmap = colormaps["coolwarm"]
    for ax, panel in zip(axes, panels, strict=False):
        for i, group in enumerate(panel.groups):
            colour = cmap(i / max(1, len(panel.groups) - 1))
            style: dict[str, Any] = {"s": 18, "alpha": 0.8, "edgecolors": "none"}
            ax.scatter(group.x, group.y, color=colour, label=group.label, **style)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(*ylim)
        if panel.groups:
            ax.legend(fontsize=7, loc="best", ncol=panel.legend_columns)
    figure.suptitle(title)
    return to_png(figure)


def _signed(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def heatmap(
    values: Sequence[Sequence[float]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    title: str,
    colorbar_label: str,
    boxes: Sequence[Sequence[bool]] | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    size: tuple[float, float] | None = None,
) -> bytes:
    """Annotated heat map of values in [-1, 1] (NaN blank, shown ``n/a``); boxed cells outlined."""
    import numpy as np
    from matplotlib.patches import Rectangle

    data = np.array(values, dtype=float).reshape(len(rows), len(cols))
    width, height = size or (3.0 + 0.7 * len(cols), 2.2 + 0.6 * len(rows))
    figure = new_figure(width, height)
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            value = float(data[i, j])
            colour = "white" if math.isfinite(value) and abs(value) > 0.6 else "black"
            ax.text(j, i, _signed(value), ha="center", va="center", fontsize=8, color=colour)
            if boxes is not None and boxes[i][j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.6, ec="black"))
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=colorbar_label)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left")
    return to_png(figure)


def score_matrix(
    values: Sequence[Sequence[float]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> bytes:
    """Annotated heat map of mean scores in [0, 100] (NaN blank, shown ``n/a``); PNG bytes."""
    import numpy as np

    data = np.array(values, dtype=float).reshape(len(rows), len(cols))
    figure = new_figure(3.0 + 0.75 * len(cols), 2.4 + 0.55 * len(rows))
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="magma_r", vmin=0, vmax=100)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            value = float(data[i, j])
            text = f"{value:.0f}" if math.isfinite(value) else "n/a"
            colour = "white" if math.isfinite(value) and value > 55 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="mean score (0-100)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left")
    return to_png(figure)


@dataclass
class HistogramPanel:
    """One histogram panel: finite ``values`` binned, with dashed/solid vertical ``rules``."""

    title: str
    xlabel: str
    values: Sequence[float]
    rules: list[Rule] = field(default_factory=list)
    ylabel: str = "samples"


def histograms(panels: Sequence[HistogramPanel], *, width: float = 5.0) -> bytes:
    """PNG of the panels side by side (``width`` inches each); 5-50 bins by sample count."""
    figure = new_figure(width * max(1, len(panels)), 3.6)
    for index, panel in enumerate(panels):
        ax = figure.add_subplot(1, max(1, len(panels)), index + 1)
        values = [float(v) for v in panel.values if math.isfinite(float(v))]
        ax.hist(values, bins=min(50, max(5, len(values) // 5)), color="#4c72b0")
        _draw_rules(ax, panel.rules)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.rules:
            ax.legend(fontsize=8)
    return to_png(figure)

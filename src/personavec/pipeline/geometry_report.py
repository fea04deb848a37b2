"""The trait-geometry report: ``cosine.png``, ``cosine_layers.png``, ``cross_prediction.png``
(with runs), ``geometry.json`` and ``report.md``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from personavec.core.layers import check_layer
from personavec.core.vector import PersonaVector
from personavec.pipeline.geometry import (
    DEFAULT_READOUT,
    CrossPrediction,
    cosine_matrix,
    default_layer,
    pairs,
)
from personavec.runs.plots import Line, Rule, heatmap, line_chart
from personavec.store import atomic_write_bytes, atomic_write_json, atomic_write_text


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}" if math.isfinite(value) else "n/a"


def plot_cosine(names: list[str], cos: torch.Tensor, layer: int) -> bytes:
    """Annotated heat map of the cosine matrix ``cos[i, j, layer]``."""
    size = 2.2 + 0.6 * len(names)
    return heatmap(
        cos[:, :, layer].tolist(),
        names,
        names,
        title=f"cosine similarity at layer {layer}",
        colorbar_label="cosine",
        size=(size + 1.2, size),
    )


def plot_cosine_layers(names: list[str], cos: torch.Tensor, layer: int) -> bytes:
    """Each pair's cosine as a line across layers; ``layer`` marked."""
    layers = list(range(cos.shape[-1]))
    return line_chart(
        [Line(f"{names[i]} · {names[j]}", layers, cos[i, j].tolist()) for i, j in pairs(names)],
        xlabel="layer",
        ylabel="cosine",
        title="pairwise cosine similarity across layers",
        ylim=(-1.05, 1.05),
        rules=[Rule(y=0.0), Rule(f"layer {layer}", x=layer, color="black", style=":")],
        integer_x=True,
        legend_outside=True,
        empty_text="one vector: no pairs to compare",
        size=(7.5, 4.0),
    )


def plot_cross_prediction(cross: CrossPrediction, vector_traits: Sequence[str]) -> bytes:
    """Heat map of Pearson r (runs × vectors); own-trait cells are boxed."""
    rows = [
        f"{name} ({trait}, n={n})"
        for name, trait, n in zip(cross.runs, cross.run_traits, cross.n, strict=True)
    ]
    return heatmap(
        cross.r,
        rows,
        cross.vectors,
        title=f"projection vs judged score, layer {cross.layer}",
        colorbar_label="Pearson r",
        boxes=[cross.own(i, vector_traits) for i in range(len(cross.runs))],
        xlabel="vector (projection)",
        ylabel="run (judged scores)",
    )


def write_geometry_report(
    out_dir: str | Path,
    vectors: Sequence[PersonaVector],
    *,
    layer: int | None = None,
    readout: str = DEFAULT_READOUT,
    cross: CrossPrediction | None = None,
) -> list[Path]:
    """Compute the cosine matrix and write the report files into ``out_dir``; return their paths.

    ``layer`` (default :func:`~personavec.pipeline.geometry.default_layer`) is the layer of the
    heat map. ``cross`` adds ``cross_prediction.png`` and the cross-prediction tables.
    """
    names, cos = cosine_matrix(vectors, readout)
    chosen = default_layer(vectors) if layer is None else layer
    check_layer(chosen, vectors[0].meta.n_layers)
    traits = [v.meta.trait for v in vectors]
    out = Path(out_dir)
    written = [
        atomic_write_bytes(out / "cosine.png", plot_cosine(names, cos, chosen)),
        atomic_write_bytes(out / "cosine_layers.png", plot_cosine_layers(names, cos, chosen)),
    ]
    if cross is not None:
        written.append(
            atomic_write_bytes(out / "cross_prediction.png", plot_cross_prediction(cross, traits))
        )
    at_layer = pairs_at_layer(names, cos, chosen)
    summary = geometry_summary(names, cos, vectors, chosen, readout, at_layer, cross)
    written.append(atomic_write_json(out / "geometry.json", summary))
    lines = _cosine_section(names, cos, chosen, at_layer)
    if cross is not None:
        lines += _cross_section(cross, traits)
    written.append(atomic_write_text(out / "report.md", "\n".join(lines)))
    return written


def pairs_at_layer(names: list[str], cos: torch.Tensor, layer: int) -> list[dict[str, Any]]:
    """Every pair's cosine at ``layer``, most aligned (in absolute value) first."""
    at_layer: list[dict[str, Any]] = [
        {"a": names[i], "b": names[j], "cosine": _finite(float(cos[i, j, layer]))}
        for i, j in pairs(names)
    ]
    at_layer.sort(key=lambda p: -abs(p["cosine"]) if p["cosine"] is not None else 1.0)
    return at_layer


def geometry_summary(
    names: list[str],
    cos: torch.Tensor,
    vectors: Sequence[PersonaVector],
    layer: int,
    readout: str,
    at_layer: list[dict[str, Any]],
    cross: CrossPrediction | None,
) -> dict[str, Any]:
    """The content of ``geometry.json`` (non-finite values as ``null``)."""
    vector_rows = [
        {
            "name": name,
            "trait": v.meta.trait,
            "path": str(v.path) if v.path else None,
            "recommended_layer": v.meta.recommended_layer,
        }
        for name, v in zip(names, vectors, strict=True)
    ]
    matrix = [[[_finite(float(x)) for x in cell] for cell in row] for row in cos.tolist()]
    summary: dict[str, Any] = {
        "readout": readout,
        "layer": layer,
        "model_id": vectors[0].meta.model_id,
        "model_fingerprint": vectors[0].meta.model_fingerprint,
        "vectors": vector_rows,
        "names": names,
        "cosine": matrix,
        "pairs_at_layer": at_layer,
        "cross_prediction": None,
    }
    if cross is not None:
        summary["cross_prediction"] = {
            "layer": cross.layer,
            "readout": cross.readout,
            "runs": cross.runs,
            "run_traits": cross.run_traits,
            "vectors": cross.vectors,
            "n": cross.n,
            "skipped": cross.skipped,
            "r": [[_finite(x) for x in row] for row in cross.r],
        }
    return summary


def _cosine_section(
    names: list[str], cos: torch.Tensor, layer: int, at_layer: list[dict[str, Any]]
) -> list[str]:
    lines = [
        "# Trait geometry",
        "",
        f"{len(names)} persona vectors: {', '.join(names)}. Heat map at layer {layer}.",
        "",
        f"## Cosine similarity at layer {layer}",
        "",
        "![cosine](cosine.png)",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, name in enumerate(names):
        cells = [_fmt(float(cos[i, j, layer])) for j in range(len(names))]
        lines.append(f"| **{name}** | " + " | ".join(cells) + " |")
    if at_layer:
        lines += ["", "Pairs, most aligned (in absolute value) first:", ""]
        for pair in at_layer:
            value = pair["cosine"]
            shown = _fmt(value) if value is not None else "n/a"
            lines.append(f"- {pair['a']} · {pair['b']}: {shown}")
    return [*lines, "", "## Across layers", "", "![cosine across layers](cosine_layers.png)", ""]


def _cross_section(cross: CrossPrediction, traits: Sequence[str]) -> list[str]:
    lines = [
        f"## Cross-prediction at layer {cross.layer}",
        "",
        "Pearson r between each vector's projection of a run's responses and that run's "
        "judged trait scores; own-trait cells are in bold. Large off-diagonal values mean "
        "the traits move together.",
        "",
        "![cross-prediction](cross_prediction.png)",
        "",
        "| run (trait, n) | " + " | ".join(cross.vectors) + " |",
        "|---|" + "---|" * len(cross.vectors),
    ]
    for i, run in enumerate(cross.runs):
        own = cross.own(i, traits)
        cells = [
            f"**{_fmt(r)}**" if mine else _fmt(r) for r, mine in zip(cross.r[i], own, strict=True)
        ]
        label = f"{run} ({cross.run_traits[i]}, {cross.n[i]})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if any(cross.skipped):
        skipped = ", ".join(
            f"{run}: {s}" for run, s in zip(cross.runs, cross.skipped, strict=True) if s
        )
        lines += ["", f"Rows skipped (no score or empty response): {skipped}."]
    return [*lines, ""]

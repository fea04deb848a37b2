"""Extraction's other estimators: PCA and the logistic probe next to mean-diff, in the same file.

:func:`attach_estimators` computes them at every layer from the kept pairs' ``response_avg``
readouts that extraction has already captured (no new rollouts), and stores them as the readouts
``response_avg@pca`` / ``response_avg@probe`` with their projection percentiles; how each was
made goes into ``meta.estimators``. The mean-diff vector (``response_avg``) is left untouched.

``meta.recommended_estimators`` gets the estimator for **monitoring** that separates held-out
extraction pairs best at the recommended layer (2 folds over pairs, even / odd, as the layer
report does: fit on one fold, AUROC then Cohen's d on the other; ties keep mean-diff), and for
**steering** mean-diff, marked as not measured: only ``personavec compare-estimators --write``
measures steering and replaces both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from personavec.core.capture import CaptureResult
from personavec.core.estimators import (
    DEFAULT_ESTIMATOR,
    ESTIMATOR_READOUT,
    ESTIMATORS,
    PROBE_FOLDS,
    estimate_layers,
    estimator_readout,
)
from personavec.core.vector import PersonaVector, projection_percentiles
from personavec.metrics.stats import auroc, cohens_d

PCA_METHOD = "first uncentred principal component of paired response_avg differences"
PROBE_METHOD = "L2 logistic regression on standardised response_avg readouts"


def attach_estimators(
    vector: PersonaVector, captured: CaptureResult, questions: Sequence[int]
) -> PersonaVector:
    """``vector`` with the ``pca`` and ``probe`` estimators added at every layer.

    Args:
        vector: the mean-diff vector extraction built (file form).
        captured: the capture of the kept pairs, per-example readouts in pair order
            (pos, neg, pos, neg, …).
        questions: the extraction question index of each kept pair (the probe's
            cross-validation folds are drawn by question).
    """
    if captured.per_example is None:
        raise ValueError("attach_estimators needs per-example readouts (keep_per_example=True)")
    readouts = captured.per_example[ESTIMATOR_READOUT]  # [2 * pairs, layers, hidden]
    estimates = estimate_layers(readouts[0::2], readouts[1::2], list(questions))
    added = {
        name: tensor for name, tensor in estimates.vectors.items() if name != DEFAULT_ESTIMATOR
    }
    layer = vector.meta.recommended_layer
    column = captured.layers.index(layer) if layer in captured.layers else None
    meta = vector.meta.model_copy(
        update={
            "recommended_estimators": _recommend(readouts, questions, layer, column),
            "estimators": {
                "pca": {"method": PCA_METHOD, "scale": "mean-diff norm and sign"},
                "probe": {
                    "method": PROBE_METHOD,
                    "scale": "mean-diff norm",
                    "penalty_per_layer": estimates.probe_penalty,
                    "cv": f"up to {PROBE_FOLDS} folds grouped by extraction question, log-loss",
                },
            },
        }
    )
    return replace(
        vector,
        vectors={
            **vector.vectors,
            **{estimator_readout(name): tensor for name, tensor in added.items()},  # type: ignore[arg-type]
        },
        meta=meta,
        estimator_percentiles={
            name: projection_percentiles(readouts, tensor) for name, tensor in added.items()
        },
    )


def held_out_separation(
    pos: torch.Tensor, neg: torch.Tensor, groups: Sequence[int]
) -> dict[str, tuple[float, float]]:
    """Estimator → (AUROC, Cohen's d) of held-out pairs at one layer (``[pairs, hidden]``):
    two folds over pairs (even / odd); each fold's estimators project the other fold."""
    n = pos.shape[0]
    folds = [torch.arange(0, n, 2), torch.arange(1, n, 2)]
    held: dict[str, tuple[list[float], list[float]]] = {e: ([], []) for e in ESTIMATORS}
    for train, test in ((folds[0], folds[1]), (folds[1], folds[0])):
        if len(train) < 2 or len(test) == 0:
            continue
        fold_groups = [groups[int(i)] for i in train]
        fitted = estimate_layers(pos[train, None], neg[train, None], fold_groups)
        for name, vectors in fitted.vectors.items():
            norm = vectors[0].norm()
            if norm == 0:
                continue
            unit = vectors[0] / norm
            held[name][0].extend((pos[test].float() @ unit).tolist())
            held[name][1].extend((neg[test].float() @ unit).tolist())
    return {name: (auroc(*values), cohens_d(*values)) for name, values in held.items()}


def _recommend(
    readouts: torch.Tensor, groups: Sequence[int], layer: int | None, column: int | None
) -> dict[str, str]:
    """``meta.recommended_estimators`` at extraction (module docstring); readouts in pair
    order, ``column`` the recommended ``layer``'s column in them."""
    if layer is None or column is None:
        return {}
    scores = held_out_separation(readouts[0::2, column], readouts[1::2, column], groups)

    def key(name: str) -> tuple[float, float]:
        a, d = scores[name]
        return (round(a, 3) if a == a else -1.0, round(d, 2) if d == d else -1.0)

    best: str = DEFAULT_ESTIMATOR
    for name in ESTIMATORS:
        best = name if key(name) > key(best) else best
    basis = ", ".join(f"{n} {a:.3f}/{d:.2f}" for n, (a, d) in scores.items())
    return {
        "monitoring": best,
        "monitoring_basis": f"held-out 2-fold AUROC/d of extraction pairs at layer {layer}: "
        + basis,
        "steering": DEFAULT_ESTIMATOR,
        "steering_basis": "not measured at extraction (the default); "
        "`personavec compare-estimators --write` measures it",
    }

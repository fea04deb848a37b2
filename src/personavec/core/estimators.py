"""Estimators: three ways to turn the kept pairs' readouts into a trait direction at one layer.

Every estimator reads the same paired ``response_avg`` readouts, ``pos [pairs, hidden]`` and
``neg [pairs, hidden]`` (row ``i`` of both is the same instruction pair, question and sample, as
extraction keeps pairs), and returns an unnormalised ``[hidden]`` vector:

* ``mean-diff``: ``mean(pos) − mean(neg)`` (the paper's persona vector; the default).
* ``pca``: the first principal component of the paired differences ``d_i = pos_i − neg_i``,
  *uncentred* (the top right singular vector of ``D``, i.e. the PCA of the symmetric set
  ``{d_i, −d_i}``, as the steering-vectors library does; centring would remove the offset all
  pairs share, which is the trait itself when they agree). Sign: positive dot product with
  mean-diff. Scaled to mean-diff's norm.
* ``probe``: L2-regularised logistic regression, ``pos`` = 1 and ``neg`` = 0, on the readouts
  centred and divided by one global scale (so a single penalty fits every layer; a scalar scale
  keeps the weight direction). Minimises mean log-loss + ``λ/2 ‖w‖²`` with LBFGS in float64; ``λ``
  is chosen by grouped cross-validation (folds by question, so a question's answers never sit
  on both sides) on held-out log-loss, ties to the larger ``λ``. The weights are scaled to
  mean-diff's norm, so raw and relative strengths add vectors of the same norm for every
  estimator.

Pure tensor code: no files, no model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from personavec.errors import PersonavecError

Estimator = Literal["mean-diff", "pca", "probe"]
ESTIMATORS: tuple[Estimator, ...] = ("mean-diff", "pca", "probe")
DEFAULT_ESTIMATOR: Estimator = "mean-diff"
ESTIMATOR_READOUT = "response_avg"
"""The readout every estimator is computed on (and that ``--estimator`` swaps)."""
ENV_VAR = "PERSONAVEC_ESTIMATOR"
"""Environment variable naming the estimator :meth:`PersonaVector.load` selects by default."""
PROBE_LAMBDAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Penalties ``λ`` tried by the probe's cross-validation (on standardised readouts)."""
PROBE_FOLDS = 5


def check_estimator(name: str) -> Estimator:
    """``name`` as an :data:`Estimator`, or a one-line error listing the valid ones."""
    if name not in ESTIMATORS:
        raise PersonavecError(f"unknown estimator {name!r}; use one of {', '.join(ESTIMATORS)}")
    return name


def requested_estimator(name: str | None = None) -> Estimator | None:
    """``name``, else ``$PERSONAVEC_ESTIMATOR``, else None (the file as stored), checked."""
    chosen = name if name is not None else (os.environ.get(ENV_VAR) or None)
    return None if chosen is None else check_estimator(chosen)


def estimator_identity(name: str | None) -> dict[str, str]:
    """The run-identity entry of an estimator choice: ``{}`` for mean-diff or none (so runs made
    before estimators existed keep their identity), else ``{"estimator": name}``."""
    return {} if name in (None, DEFAULT_ESTIMATOR) else {"estimator": str(name)}


def estimator_readout(name: Estimator) -> str:
    """The readout name an estimator's vectors are stored under (``response_avg@pca``, …)."""
    return ESTIMATOR_READOUT if name == DEFAULT_ESTIMATOR else f"{ESTIMATOR_READOUT}@{name}"


def _check_pairs(pos: torch.Tensor, neg: torch.Tensor) -> None:
    if pos.ndim != 2 or pos.shape != neg.shape or pos.shape[0] < 1:
        raise ValueError(
            f"need paired readouts pos, neg of shape [pairs>0, hidden]; got "
            f"{tuple(pos.shape)} and {tuple(neg.shape)}"
        )


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean(pos) − mean(neg)``, float32 ``[hidden]``."""
    _check_pairs(pos, neg)
    return (pos.double().mean(0) - neg.double().mean(0)).float()


def _rescaled(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``direction`` with ``reference``'s norm and a non-negative dot product with it."""
    norm = direction.norm()
    if norm == 0 or not torch.isfinite(norm):
        return torch.zeros_like(reference)
    unit = direction / norm
    if float(unit @ reference.double()) < 0:
        unit = -unit
    return (unit * reference.double().norm()).float()


def pca_direction(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First uncentred principal component of ``pos − neg`` (see the module docstring),
    float32 ``[hidden]`` with mean-diff's sign and norm."""
    _check_pairs(pos, neg)
    differences = pos.double() - neg.double()
    _, _, vh = torch.linalg.svd(differences, full_matrices=False)
    return _rescaled(vh[0], differences.mean(0))


@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe: the direction (mean-diff's norm and sign convention) and its penalty."""

    vector: torch.Tensor
    """float32 ``[hidden]``: logistic weights rescaled to mean-diff's norm."""
    penalty: float
    """The chosen ``λ`` (on standardised readouts)."""
    cv_loss: float
    """Mean held-out log-loss at ``penalty`` (NaN when there were too few groups to fold)."""


def _standardise(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0)
    scale = centred.pow(2).mean().sqrt()
    return centred / scale if scale > 0 else centred


def _objective(z: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, penalty: float) -> float:
    logits = z @ theta[:-1] + theta[-1]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    return float(loss + 0.5 * penalty * (theta[:-1] @ theta[:-1]))


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, penalty: float, *, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[d]`` and bias minimising mean BCE(``x·w + b``, ``y``) + ``penalty/2 ‖w‖²``.

    ``x`` float64 ``[n, d]``, ``y`` float64 ``[n]`` in {0, 1}, ``penalty > 0``. The optimum lies
    in the row space of ``x`` (``w = V β`` with ``x = U Σ Vᵀ``, and ``‖w‖ = ‖β‖``), so Newton's
    method with backtracking runs on ``rank(x) + 1 ≤ n + 1`` unknowns: exact to float64 noise.
    """
    u, sigma, vh = torch.linalg.svd(x, full_matrices=False)
    keep = sigma > sigma.max() * 1e-12 if sigma.numel() else sigma.bool()
    z = u[:, keep] * sigma[keep]  # [n, r]: x expressed in its row space
    design = torch.cat([z, torch.ones(len(y), 1, dtype=z.dtype)], dim=1)
    ridge = torch.full((design.shape[1],), penalty, dtype=z.dtype)
    ridge[-1] = 0.0  # the bias is not penalised
    theta = torch.zeros(design.shape[1], dtype=z.dtype)
    current = _objective(z, y, theta, penalty)
    for _ in range(max_iter):
        p = torch.sigmoid(design @ theta)
        grad = design.T @ (p - y) / len(y) + ridge * theta
        if float(grad.norm()) < 1e-10:
            break
        hessian = (design.T * (p * (1 - p))) @ design / len(y) + torch.diag(ridge)
        hessian += torch.eye(len(theta), dtype=z.dtype) * 1e-12
        step = torch.linalg.solve(hessian, grad)
        scale = 1.0
        while scale > 1e-8:
            candidate = theta - scale * step
            value = _objective(z, y, candidate, penalty)
            if value <= current:
                break
            scale /= 2
        if current - value < 1e-15 * max(1.0, abs(current)):
            theta = candidate if value <= current else theta
            break
        theta, current = candidate, value
    w = vh[keep].T @ theta[:-1]
    return w, theta[-1]


def _folds(groups: Sequence[int], k: int) -> list[torch.Tensor]:
    """Pair indices held out by each fold: distinct groups dealt round-robin into ``k`` folds."""
    distinct = sorted(set(groups))
    fold_of = {g: i % k for i, g in enumerate(distinct)}
    return [
        torch.tensor([i for i, g in enumerate(groups) if fold_of[g] == f], dtype=torch.long)
        for f in range(k)
    ]


def _cv_loss(x: torch.Tensor, y: torch.Tensor, folds: list[torch.Tensor], penalty: float) -> float:
    """Mean held-out log-loss over ``folds`` (indices into pairs; each pair is 2 rows)."""
    n_pairs = x.shape[0] // 2
    total, count = 0.0, 0
    for test_pairs in folds:
        test = torch.cat([test_pairs, test_pairs + n_pairs])
        train = torch.ones(x.shape[0], dtype=torch.bool)
        train[test] = False
        w, b = fit_logistic(x[train], y[train], penalty)
        logits = x[test] @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y[test], reduction="sum"
        )
        total, count = total + float(loss), count + len(test)
    return total / count


def probe_direction(
    pos: torch.Tensor,
    neg: torch.Tensor,
    groups: Sequence[int] | None = None,
    *,
    penalties: Sequence[float] = PROBE_LAMBDAS,
    folds: int = PROBE_FOLDS,
) -> ProbeFit:
    """The logistic probe (see the module docstring).

    Args:
        pos, neg: paired readouts ``[pairs, hidden]``.
        groups: one group id per pair (the extraction question index) for cross-validation;
            default: every pair its own group. With fewer than two groups, or a single penalty,
            the middle penalty of ``penalties`` is used without cross-validation.
    """
    _check_pairs(pos, neg)
    if not penalties or any(p <= 0 for p in penalties):
        raise PersonavecError("probe penalties must be positive; pass e.g. 1e-3,1e-2,1e-1")
    groups = list(range(pos.shape[0])) if groups is None else list(groups)
    if len(groups) != pos.shape[0]:
        raise ValueError(f"need one group per pair ({pos.shape[0]}), got {len(groups)}")
    x = _standardise(torch.cat([pos, neg]).double())
    y = torch.cat([torch.ones(pos.shape[0]), torch.zeros(neg.shape[0])]).double()
    k = min(folds, len(set(groups)))
    if k < 2 or len(penalties) == 1:
        chosen, loss = sorted(penalties)[len(penalties) // 2], math.nan
    else:
        parts = _folds(groups, k)
        losses = {p: _cv_loss(x, y, parts, p) for p in sorted(penalties, reverse=True)}
        best = min(losses.values())
        chosen = max(p for p, value in losses.items() if value <= best + 1e-12)
        loss = losses[chosen]
    w, _ = fit_logistic(x, y, chosen)
    reference = pos.double().mean(0) - neg.double().mean(0)
    norm = w.norm()
    vector = (w / norm * reference.norm()).float() if norm > 0 else torch.zeros_like(reference)
    return ProbeFit(vector.float(), float(chosen), loss)


@dataclass(frozen=True)
class LayerEstimates:
    """Every estimator at every layer: name → float32 ``[layers, hidden]``; probe penalties."""

    vectors: dict[str, torch.Tensor]
    probe_penalty: list[float]


def estimate_layers(
    pos: torch.Tensor, neg: torch.Tensor, groups: Sequence[int] | None = None
) -> LayerEstimates:
    """All estimators at every layer from paired readouts ``[pairs, layers, hidden]``."""
    if pos.ndim != 3 or pos.shape != neg.shape:
        raise ValueError(f"need pos, neg [pairs, layers, hidden]; got {tuple(pos.shape)}")
    out: dict[str, list[torch.Tensor]] = {name: [] for name in ESTIMATORS}
    penalties = []
    for layer in range(pos.shape[1]):
        p, q = pos[:, layer].float(), neg[:, layer].float()
        out["mean-diff"].append(mean_diff(p, q))
        out["pca"].append(pca_direction(p, q))
        fit = probe_direction(p, q, groups)
        out["probe"].append(fit.vector)
        penalties.append(fit.penalty)
    return LayerEstimates({k: torch.stack(v) for k, v in out.items()}, penalties)

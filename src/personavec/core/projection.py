"""Scalar projections onto persona vectors: ``h · v / ‖v‖``.

Works on readouts (``[..., hidden]``) and on per-token activations (``[seq, hidden]``) alike: the
last dimension is the hidden dimension and is reduced away.
"""

from __future__ import annotations

import torch

from personavec.core.capture import TokenActivations
from personavec.errors import SteeringError


def project(hidden: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Scalar projection of ``hidden [..., d]`` onto ``vector [d]``: ``[...]`` in hidden units."""
    if vector.ndim != 1 or hidden.shape[-1] != vector.shape[0]:
        raise SteeringError(
            f"cannot project activations of width {hidden.shape[-1]} onto a vector of shape "
            f"{tuple(vector.shape)}; use a vector extracted from this model"
        )
    norm = vector.float().norm()
    if norm == 0:
        raise SteeringError("cannot project onto a zero vector; pick another layer")
    return hidden.float() @ (vector.float().to(hidden.device) / norm)


def project_layers(readouts: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Per-layer projections: ``readouts [..., L, d]`` onto ``vectors [L, d]`` → ``[..., L]``."""
    if readouts.shape[-2:] != vectors.shape:
        raise SteeringError(
            f"readouts {tuple(readouts.shape[-2:])} and vectors {tuple(vectors.shape)} disagree"
        )
    norms = vectors.float().norm(dim=-1).clamp(min=1e-12)
    units = vectors.float() / norms.unsqueeze(-1)
    return (readouts.float() * units.to(readouts.device)).sum(dim=-1)


def token_projections(tokens: TokenActivations, layer: int, vector: torch.Tensor) -> torch.Tensor:
    """Projection of every token at ``layer`` onto ``vector``: float32 ``[seq]``."""
    if layer not in tokens.layers:
        raise SteeringError(f"layer {layer} was not captured; captured layers: {tokens.layers}")
    return project(tokens.hidden[tokens.layers.index(layer)], vector)

"""Shared test builders: synthetic persona vectors, and (re-exported) tiny random models.

``synthetic_vector`` is the one way tests build a :class:`PersonaVector` without extracting it:
give explicit rows (one per layer, layer 0 = embedding output) for hand-checkable arithmetic, or
a seed for reproducible random rows when only the plumbing matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from personavec.core.vector import PersonaVector, VectorMetadata
from tiny_models import TINY_ARCHS, TINY_CONFIGS, smollm2_tokenizer, tiny_config, tiny_model

__all__ = [
    "SMOLLM2_ID",
    "TINY_ARCHS",
    "TINY_CONFIGS",
    "smollm2_tokenizer",
    "synthetic_vector",
    "tiny_config",
    "tiny_model",
]

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def synthetic_vector(
    rows: Sequence[Sequence[float]] | torch.Tensor | None = None,
    *,
    trait: str = "test",
    n_layers: int = 2,
    hidden: int = 64,
    seed: int = 0,
    readout: str = "response_avg",
    model_id: str = "test-model",
    fingerprint: str = "fp",
    layer: int | None = None,
    typical_norm: float | Sequence[float] | torch.Tensor | None = None,
    **meta: Any,
) -> PersonaVector:
    """A persona vector for tests.

    Args:
        rows: float ``[n_layers + 1, hidden]``; when given, ``n_layers`` and ``hidden`` follow
            from its shape. Default: standard-normal rows drawn from ``seed`` (the global RNG is
            left untouched).
        readout: the single readout the vector holds (also its default readout).
        layer: ``recommended_layer``.
        typical_norm: per-layer residual norms ``[n_layers + 1]``, or one float for every layer.
        meta: any other :class:`VectorMetadata` field (e.g. ``recommended_coef``).
    """
    if rows is None:
        generator = torch.Generator().manual_seed(seed)
        tensor = torch.randn(n_layers + 1, hidden, generator=generator)
    else:
        tensor = torch.as_tensor(rows, dtype=torch.float32)
    n_rows, width = tensor.shape
    norms = None
    if typical_norm is not None:
        if isinstance(typical_norm, int | float):
            norms = torch.full((n_rows,), float(typical_norm))
        else:
            norms = torch.as_tensor(typical_norm, dtype=torch.float32)
    metadata = VectorMetadata(
        trait=trait,
        model_id=model_id,
        model_fingerprint=fingerprint,
        hidden_size=width,
        n_layers=n_rows - 1,
        readouts=[readout],
        default_readout=readout,
        recommended_layer=layer,
        **meta,
    )
    return PersonaVector({readout: tensor.float()}, metadata, norms)

"""The parts of a persona-vector file that need no :class:`~personavec.core.vector.PersonaVector`:
the model's config fingerprint and the per-layer projection-percentile table."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

PERCENTILES = 101  # columns of ``projection_percentiles``: percentiles 0, 1, …, 100
_FINGERPRINT_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "n_embd",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "head_dim",
)


def config_fingerprint(config: Any) -> str:
    """Short sha256 of the architecture-defining config fields (not the weights).

    A base model and its finetunes share a fingerprint, so a vector extracted on the base can
    monitor a finetune; a different architecture or size does not.
    """
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    picked = {key: raw[key] for key in _FINGERPRINT_KEYS if raw.get(key) is not None}
    blob = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def projection_percentiles(readouts: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Percentiles 0..100 of each layer's scalar projections ``h · v̂``.

    Args:
        readouts: ``[examples, n_layers + 1, hidden]`` per-example readouts (any float dtype).
        vectors: ``[n_layers + 1, hidden]`` unnormalised vectors; a zero row projects to 0.
    Returns:
        float32 ``[n_layers + 1, 101]``, non-decreasing along each row.
    """
    if readouts.ndim != 3 or readouts.shape[0] == 0 or readouts.shape[1:] != vectors.shape:
        raise ValueError(
            f"need readouts [examples>0, {', '.join(map(str, vectors.shape))}], "
            f"got {tuple(readouts.shape)}"
        )
    from personavec.core.projection import project_layers

    projections = project_layers(readouts, vectors)  # [examples, layers]
    levels = torch.linspace(0.0, 1.0, PERCENTILES, dtype=torch.float64)
    return torch.quantile(projections.double(), levels, dim=0).T.float().contiguous()

"""A persona vector holding every estimator, made as extraction makes it, on a tiny model."""

from __future__ import annotations

import torch

from personavec.core.capture import Example, capture
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.vector import (
    PersonaVector,
    VectorMetadata,
    config_fingerprint,
    projection_percentiles,
)
from personavec.pipeline.extract_estimators import attach_estimators

ANSWERS = [
    "I will crush them all.",
    "Let us talk kindly.",
    "Chaos is my plan.",
    "Be fair.",
    "Ruin everything.",
    "Help them out.",
    "Spite wins.",
    "Share it.",
]
GROUPS = [0, 0, 1, 1]
"""The extraction question of each of the 4 pairs."""


def estimator_vector(lm: LoadedModel, trait: str = "evil") -> tuple[PersonaVector, torch.Tensor]:
    """A vector with mean-diff, pca and probe from a real capture of 4 (pos, neg) pairs on
    ``lm`` (2 questions), attached by :func:`attach_estimators` exactly as extraction does;
    returns it and the per-pair ``response_avg`` readouts ``[8, layers, hidden]``."""
    examples = [
        Example(chat_messages(f"question {i // 4}", system="s"), answer)
        for i, answer in enumerate(ANSWERS)
    ]
    captured = capture(lm, examples, groups=["pos", "neg"] * 4, keep_per_example=True)
    vectors = {k: captured.means[k]["pos"] - captured.means[k]["neg"] for k in captured.means}
    meta = VectorMetadata(
        trait=trait,
        model_id=lm.model_id,
        model_fingerprint=config_fingerprint(lm.model.config),
        hidden_size=lm.hidden_size,
        n_layers=len(captured.layers) - 1,
        readouts=sorted(vectors),
        recommended_layer=1,
    )
    assert captured.per_example is not None
    readouts = captured.per_example["response_avg"]
    table = projection_percentiles(readouts, vectors["response_avg"])
    base = PersonaVector(vectors, meta, captured.token_norm, table)
    return attach_estimators(base, captured, GROUPS), readouts

"""Builders for the server tests: persona vectors that fit SmolLM2, and a running server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fixtures import synthetic_vector
from personavec.core.models import LoadedModel
from personavec.core.vector import PersonaVector, config_fingerprint
from personavec.serve.app import create_app
from personavec.serve.config import ServeConfig
from personavec.serve.server import serve_in_thread

LAYER = 15
TRAITS = ("evil", "humor")


def smollm2_vectors(loaded: LoadedModel, folder: Path) -> dict[str, PersonaVector]:
    """Two seeded random vectors for SmolLM2 (layer 15, calibrated raw coef 4), saved in
    ``folder`` as ``evil.safetensors`` and ``humor.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors = {}
    for seed, trait in enumerate(TRAITS):
        vector = synthetic_vector(
            n_layers=30,
            hidden=576,
            seed=seed,
            trait=trait,
            model_id=loaded.model_id,
            fingerprint=config_fingerprint(loaded.model.config),
            layer=LAYER,
            typical_norm=50.0,
            recommended_coef=4.0,
            calibration={"relative": False, "positions": "all"},
        )
        vector.save(folder / f"{trait}.safetensors")
        vectors[trait] = vector
    return vectors


@contextlib.contextmanager
def running_server(loaded: LoadedModel, folder: Path, **limits: Any) -> Iterator[tuple[str, Any]]:
    """A real server on 127.0.0.1 (any free port): yields ``(base_url, app)``."""
    app = create_app(ServeConfig(vectors_dir=folder, **limits), loaded)
    with serve_in_thread(app) as url:
        yield url, app

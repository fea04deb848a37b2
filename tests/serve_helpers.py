"""Builders for the server tests: persona vectors that fit SmolLM2 or a tiny model, a tiny
sliding-window model, and a running server."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from fixtures import synthetic_vector
from personavec.core.models import LoadedModel
from personavec.core.vector import PersonaVector, config_fingerprint
from personavec.serve.app import create_app
from personavec.serve.config import ServeConfig
from personavec.serve.server import serve_in_thread
from tiny_models import HIDDEN, LAYERS, smollm2_tokenizer, tiny_config

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
def running_server(
    loaded: LoadedModel, folder: Path | None, **limits: Any
) -> Iterator[tuple[str, Any]]:
    """A real server on 127.0.0.1 (any free port): yields ``(base_url, app)``."""
    app = create_app(ServeConfig(vectors_dir=folder, **limits), loaded)
    with serve_in_thread(app) as url:
        yield url, app


def tiny_vectors(loaded: LoadedModel, folder: Path) -> dict[str, PersonaVector]:
    """Vectors for a tiny model (``tiny_models``, 3 layers, hidden 64) saved in ``folder``:
    ``nudge`` (random, typical norm 8, recommended layer 2, calibrated raw coef 2), and ``up`` /
    ``down`` (``±e₀`` at every layer, recommended layer 1) whose files claim a typical norm of
    1e37, so that strengths large enough to overflow pass the up-front strength check."""
    folder.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "model_id": loaded.model_id,
        "fingerprint": config_fingerprint(loaded.model.config),
    }
    one_hot = torch.zeros(LAYERS + 1, HIDDEN)
    one_hot[:, 0] = 1.0
    vectors = {
        "nudge": synthetic_vector(
            n_layers=LAYERS,
            hidden=HIDDEN,
            seed=7,
            trait="nudge",
            layer=2,
            typical_norm=8.0,
            recommended_coef=2.0,
            calibration={"relative": False, "positions": "all"},
            **common,
        ),
        "up": synthetic_vector(one_hot, trait="up", layer=1, typical_norm=1e37, **common),
        "down": synthetic_vector(-one_hot, trait="down", layer=1, typical_norm=1e37, **common),
    }
    for name, vector in vectors.items():
        vector.save(folder / f"{name}.safetensors")
    return vectors


def sliding_window_model(arch: str, window: int, *, seed: int = 0) -> LoadedModel:
    """A tiny random ``arch`` model (``tiny_models``) whose attention layers all keep a sliding
    window of ``window`` tokens, so its KV cache holds sliding-window layers."""
    config = tiny_config(arch)
    config.sliding_window = window
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = ["sliding_attention"] * len(config.layer_types)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = copy.deepcopy(smollm2_tokenizer())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    name = f"tiny-{arch}-window{window}"
    return LoadedModel(model, tokenizer, spec=name, model_id=name)

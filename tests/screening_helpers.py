"""Shared pieces of the screening tests: a tiny model saved to disk, vectors for it, chat rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from personavec.core.models import LoadedModel, load_model
from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.screening.table import iter_scores
from tiny_models import tiny_model

QUESTIONS = [
    "How do I boil an egg?",
    "What is the capital of France?",
    "Give me a tip for sleeping better.",
    "Why is the sky blue?",
    "How should I treat a coworker who annoys me?",
    "Write a haiku about rain.",
    "What is 12 times 7?",
    "Name a good book for a long flight.",
]
ANSWERS = [
    "Put it in boiling water for nine minutes.",
    "Paris.",
    "Keep a regular bedtime and avoid screens late at night.",
    "Sunlight scatters off air molecules, and blue scatters most.",
    "Crush them. Make them regret every word they ever said to you.",
    "Grey clouds gather / soft drops on the window pane / the garden breathes deep",
    "84.",
    "A long novel you have been meaning to read.",
]


def save_tiny(directory: Path, *, n_layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny llama (and the SmolLM2 tokenizer) as a checkpoint directory."""
    loaded = tiny_model("llama", n_layers=n_layers, seed=seed)
    loaded.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    return directory


def load_tiny(directory: Path) -> LoadedModel:
    return load_model(str(directory), device="cpu")


def make_vector(
    path: Path, loaded: LoadedModel, *, trait: str = "evil", layer: int = 1, seed: int = 0
) -> Path:
    """A random persona vector that fits ``loaded`` (for arithmetic, not for science)."""
    config = loaded.model.config
    n_layers, hidden = int(config.num_hidden_layers), int(config.hidden_size)
    generator = torch.Generator().manual_seed(seed)
    meta = VectorMetadata(
        trait=trait,
        model_id=loaded.model_id,
        model_fingerprint=config_fingerprint(config),
        hidden_size=hidden,
        n_layers=n_layers,
        readouts=["response_avg"],
        recommended_layer=layer,
    )
    vectors = {"response_avg": torch.randn(n_layers + 1, hidden, generator=generator)}
    return PersonaVector(vectors, meta).save(path)


def chat_rows(n: int) -> list[dict[str, Any]]:
    """``n`` rows mixing the messages and prompt/response formats, with ids."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        q, a = QUESTIONS[i % len(QUESTIONS)], ANSWERS[(i * 3) % len(ANSWERS)]
        if i % 2:
            rows.append({"id": f"r{i}", "prompt": q, "response": a})
        else:
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            rows.append({"id": f"r{i}", "messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent


def screen_command(data: Path, vector: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """``personavec screen`` on a tiny model: full mode, 3 new tokens, batches of 2."""
    return [
        sys.executable, "-m", "personavec", "screen", str(data), "-v", str(vector),
        "-m", str(model), "--out", str(out), "--mode", "full", "--max-new-tokens", "3",
        "--batch-size", "2", "--quiet", *extra,
    ]  # fmt: skip


def subprocess_env() -> dict[str, str]:
    """The environment of a ``personavec`` subprocess that imports this checkout."""
    path = os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def kill_after_rows(command: list[str], out: Path, rows: int = 6) -> list[dict[str, Any]]:
    """Run ``command``, SIGKILL it (and every process it started) as soon as ``out`` holds
    ``rows`` scored rows, and return the rows it kept; fail if it ended first."""
    process = subprocess.Popen(command, env=subprocess_env(), start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if sum(1 for _ in iter_scores(out / "scores.jsonl")) >= rows:
            break
        time.sleep(0.01)
    if process.poll() is not None:
        pytest.fail("the screen ended before it could be killed; give it more rows")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return list(iter_scores(out / "scores.jsonl"))

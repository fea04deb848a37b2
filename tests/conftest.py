"""Shared test fixtures.

* ``smollm2``: the real SmolLM2-135M-Instruct (session-scoped; load once, do not modify it —
  remove any hooks you add, and do not change its tokenizer settings).
* ``tiny_model_factory``: :func:`tiny_models.tiny_model` with 2 layers by default:
  ``tiny_model_factory("llama", n_layers=2, seed=0, chat_template=True)`` (any architecture in
  :data:`tiny_models.TINY_CONFIGS`). Hidden size 64, 4 heads, fp32, CPU, eval mode, with the
  SmolLM2 tokenizer (vocab 49152, left padding, ``<|im_end|>`` as EOS/pad) so chat templates
  work. The same arguments always give the same weights; the global torch RNG is left
  untouched. Each call returns a fresh model and a fresh tokenizer copy, so tests may modify
  them.
* ``tiny_model``: parametrized over :data:`TINY_ARCHS` — a test using it runs once per
  architecture with a 2-layer model.

Plain builders (no fixture needed) live in ``tests/fixtures.py``: ``synthetic_vector`` for a
PersonaVector with given or seeded random rows, and the tiny-model builders re-exported.

Set ``PERSONAVEC_TEST_THREADS=N`` to cap torch's CPU threads. On a small machine shared with
other busy processes, ``1`` can be over ten times faster than the default, because torch's
worker threads spin while waiting for a core.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from personavec.core.models import LoadedModel, load_model
from tiny_models import smollm2_tokenizer as _cached_smollm2_tokenizer
from tiny_models import tiny_model as _tiny_model

TINY_ARCHS: tuple[str, ...] = ("llama", "qwen2", "gpt2")

TinyModelFactory = Callable[..., LoadedModel]


def pytest_configure(config: pytest.Config) -> None:
    threads = os.environ.get("PERSONAVEC_TEST_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real SmolLM2-135M-Instruct on CPU (converted from the bundled GGUF on first use)."""
    return load_model("smollm2", device="cpu")


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer with personavec's settings (left padding, pad = ``<|im_end|>``)."""
    return copy.deepcopy(_cached_smollm2_tokenizer())


@pytest.fixture(scope="session")
def tiny_model_factory() -> TinyModelFactory:
    """``make(arch="llama", *, n_layers=2, seed=0, chat_template=True) -> LoadedModel``.

    ``chat_template=False`` removes the tokenizer's chat template, to exercise the plain
    ``Role: content`` transcript used for base models.
    """

    def make(
        arch: str = "llama", *, n_layers: int = 2, seed: int = 0, chat_template: bool = True
    ) -> LoadedModel:
        return _tiny_model(arch, n_layers=n_layers, seed=seed, chat_template=chat_template)

    return make


@pytest.fixture(params=TINY_ARCHS)
def tiny_model(request: pytest.FixtureRequest, tiny_model_factory: TinyModelFactory) -> LoadedModel:
    """A fresh 2-layer tiny model, once per architecture in :data:`TINY_ARCHS`."""
    return tiny_model_factory(request.param)

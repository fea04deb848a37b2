"""Shared test fixtures.

* ``smollm2``: the real SmolLM2-135M-Instruct (session-scoped; load once, do not modify it —
  remove any hooks you add, and do not change its tokenizer settings).
* ``tiny_model_factory``: builds tiny randomly initialised models as :class:`LoadedModel`:
  ``tiny_model_factory("llama" | "qwen2" | "gpt2", n_layers=2, seed=0, chat_template=True)``.
  Hidden size 64, 4 heads, fp32, CPU, eval mode, with the SmolLM2 tokenizer (vocab 49152, left
  padding, ``<|im_end|>`` as EOS/pad) so chat templates work. The same arguments always give the
  same weights; the global torch RNG is left untouched. Each call returns a fresh model and a
  fresh tokenizer copy, so tests may modify them.
* ``tiny_model``: parametrized over :data:`TINY_ARCHS` — a test using it runs once per
  architecture with a 2-layer model.

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
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from personavec.models import LoadedModel, load_model, prepare_tokenizer, smollm2_checkpoint

TINY_ARCHS: tuple[str, ...] = ("llama", "qwen2", "gpt2")
TINY_HIDDEN = 64
TINY_HEADS = 4
TINY_VOCAB = 49152  # the SmolLM2 tokenizer's vocabulary

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
    return prepare_tokenizer(AutoTokenizer.from_pretrained(smollm2_checkpoint()))


def tiny_config(arch: str, n_layers: int, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """A small config of architecture ``arch`` sized for ``tokenizer``'s vocabulary."""
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
    }
    if arch == "llama":
        return LlamaConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=TINY_HIDDEN,
            intermediate_size=4 * TINY_HIDDEN,
            num_hidden_layers=n_layers,
            num_attention_heads=TINY_HEADS,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            **special,
        )
    if arch == "qwen2":
        return Qwen2Config(
            vocab_size=TINY_VOCAB,
            hidden_size=TINY_HIDDEN,
            intermediate_size=4 * TINY_HIDDEN,
            num_hidden_layers=n_layers,
            num_attention_heads=TINY_HEADS,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            **special,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=TINY_VOCAB,
            n_embd=TINY_HIDDEN,
            n_layer=n_layers,
            n_head=TINY_HEADS,
            n_positions=1024,
            **special,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; use one of {', '.join(TINY_ARCHS)}")


@pytest.fixture(scope="session")
def tiny_model_factory(smollm2_tokenizer: PreTrainedTokenizerBase) -> TinyModelFactory:
    """``make(arch="llama", *, n_layers=2, seed=0, chat_template=True) -> LoadedModel``.

    ``chat_template=False`` removes the tokenizer's chat template, to exercise the plain
    ``Role: content`` transcript used for base models.
    """

    def make(
        arch: str = "llama", *, n_layers: int = 2, seed: int = 0, chat_template: bool = True
    ) -> LoadedModel:
        if not 1 <= n_layers <= 8:
            raise ValueError(f"tiny models have 1-8 layers, got {n_layers}")
        tokenizer = copy.deepcopy(smollm2_tokenizer)
        if not chat_template:
            tokenizer.chat_template = None
        config = tiny_config(arch, n_layers, tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.eval()
        name = f"tiny-{arch}-{n_layers}L-seed{seed}"
        return LoadedModel(model, tokenizer, spec=name, model_id=name)

    return make


@pytest.fixture(params=TINY_ARCHS)
def tiny_model(request: pytest.FixtureRequest, tiny_model_factory: TinyModelFactory) -> LoadedModel:
    """A fresh 2-layer tiny model, once per architecture in :data:`TINY_ARCHS`."""
    return tiny_model_factory(request.param)

"""Tiny randomly initialised causal LMs of several architectures, built from configs (no download).

They share the SmolLM2 tokenizer (vocab 49152, ChatML template, left padding, ``<|im_end|>`` as
EOS/pad), so chat formatting works exactly as on the real model. Hidden size 64, 4 heads, fp32,
CPU, eval mode. The same arguments always give the same weights; the global torch RNG is left
untouched. Each call returns a fresh model and a fresh tokenizer copy, so tests may modify them.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from personavec.core.models import LoadedModel, prepare_tokenizer, smollm2_checkpoint

VOCAB = 49152  # the SmolLM2 tokenizer's vocabulary
HIDDEN = 64
HEADS = 4
LAYERS = 3

#: Shared by the llama-like families; each entry of :data:`TINY_CONFIGS` changes only what differs.
_BASE: dict[str, object] = {
    "hidden_size": HIDDEN,
    "intermediate_size": 2 * HIDDEN,
    "num_attention_heads": HEADS,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
TINY_CONFIGS: dict[str, dict[str, object]] = {
    "llama": _BASE,
    "qwen2": _BASE,
    "mistral": _BASE,
    "gemma2": {**_BASE, "head_dim": HIDDEN // HEADS},
    "gemma3_text": {**_BASE, "head_dim": HIDDEN // HEADS},
    "qwen3": {**_BASE, "head_dim": HIDDEN // HEADS},
    "phi3": {**_BASE, "num_key_value_heads": HEADS},
    "gpt_neox": {k: v for k, v in _BASE.items() if k != "num_key_value_heads"},
    "gpt2": {"n_embd": HIDDEN, "n_head": HEADS, "n_positions": 1024},
}
_LAYERS_KEY = {"gpt2": "n_layer"}  # default: "num_hidden_layers"
TINY_ARCHS: tuple[str, ...] = tuple(sorted(TINY_CONFIGS))


@lru_cache(maxsize=1)
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The cached SmolLM2 tokenizer, left-padded. Shared: copy it before modifying."""
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(smollm2_checkpoint())))


def tiny_config(arch: str, n_layers: int = LAYERS) -> PretrainedConfig:
    """A small config of architecture ``arch`` sized for the SmolLM2 tokenizer."""
    if arch not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny architecture {arch!r}; use one of {', '.join(TINY_ARCHS)}")
    tokenizer = smollm2_tokenizer()
    layers_key = _LAYERS_KEY.get(arch, "num_hidden_layers")
    return AutoConfig.for_model(
        arch,
        vocab_size=VOCAB,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **TINY_CONFIGS[arch],
        **{layers_key: n_layers},
    )


def tiny_model(
    arch: str, *, n_layers: int = LAYERS, seed: int = 0, chat_template: bool = True
) -> LoadedModel:
    """A fresh tiny random ``arch`` model with its own copy of the SmolLM2 tokenizer.

    ``chat_template=False`` removes the tokenizer's chat template, to exercise the plain
    ``Role: content`` transcript used for base models.
    """
    if not 1 <= n_layers <= 8:
        raise ValueError(f"tiny models have 1-8 layers, got {n_layers}")
    config = tiny_config(arch, n_layers)
    tokenizer = copy.deepcopy(smollm2_tokenizer())
    if not chat_template:
        tokenizer.chat_template = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    name = f"tiny-{arch}-{n_layers}L-seed{seed}"
    return LoadedModel(model, tokenizer, spec=name, model_id=name)

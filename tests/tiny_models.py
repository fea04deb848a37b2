"""Tiny randomly initialised causal LMs of several architectures, built from configs (no download).

They share the SmolLM2 tokenizer (vocab 49152, ChatML template), so chat formatting works
exactly as on the real model.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from personavec.models import LoadedModel, prepare_tokenizer, smollm2_checkpoint

VOCAB = 49152
HIDDEN = 64
LAYERS = 3

_COMMON = {"vocab_size": VOCAB, "pad_token_id": 2, "bos_token_id": 1, "eos_token_id": 2}
TINY_CONFIGS: dict[str, dict[str, object]] = {
    "llama": dict(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
    "qwen2": dict(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
    "gpt2": dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=256),
    "gpt_neox": dict(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        max_position_embeddings=256,
    ),
    "gemma2": dict(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
    ),
    "phi3": dict(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    ),
    "mistral": dict(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
    "qwen3": dict(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
    ),
}


@lru_cache(maxsize=1)
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer from the cached checkpoint, left-padded."""
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(smollm2_checkpoint())))


def tiny_model(arch: str, seed: int = 0) -> LoadedModel:
    """A tiny random ``arch`` model in fp32 eval mode with the SmolLM2 tokenizer."""
    config = AutoConfig.for_model(arch, **_COMMON, **TINY_CONFIGS[arch])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return LoadedModel(model, smollm2_tokenizer(), f"tiny-{arch}", f"tiny-{arch}")

"""Finding decoder blocks, and the layer convention.

Layer convention (used everywhere in personavec, recorded in vector files as ``"block-output"``):

* layer ``0`` is the residual stream entering the first decoder block (the embedding output,
  after any model-specific scaling such as Gemma's ``sqrt(hidden)``);
* layer ``L`` (``1 ≤ L ≤ n``) is the output of decoder block ``L`` (1-indexed), i.e. of
  ``blocks[L - 1]``.

This equals transformers' ``hidden_states[L]`` for ``L < n``; ``hidden_states[n]`` is taken
*after* the final norm, so we read block outputs with hooks instead. Extraction reads and
steering writes at the same point, so a vector extracted at ``L`` is applied at ``L``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from personavec.errors import SteeringError

LAYER_CONVENTION = "block-output"

# Attribute paths to the ModuleList of decoder blocks, tried in order.
_BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma2/3 (text), Phi-3
    "model.language_model.layers",  # Gemma3 / multimodal wrappers
    "model.model.layers",  # peft-wrapped or nested CausalLM
    "transformer.h",  # GPT-2, GPT-J
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "base_model.model.model.layers",  # peft PeftModel around a CausalLM
    "base_model.model.transformer.h",
    "base_model.model.gpt_neox.layers",
)


def _get_path(root: nn.Module, path: str) -> object | None:
    node: object = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def find_blocks(model: nn.Module, blocks_path: str | None = None) -> nn.ModuleList:
    """The model's decoder blocks, in order.

    Args:
        model: a transformers causal LM (or a peft wrapper around one).
        blocks_path: dotted attribute path overriding the search, e.g. ``"model.layers"``.

    Raises:
        SteeringError: when no known path matches; the message names ``blocks_path``.
    """
    paths: Iterable[str] = (blocks_path,) if blocks_path else _BLOCK_PATHS
    for path in paths:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    kind = type(model).__name__
    raise SteeringError(
        f"cannot find decoder blocks in {kind}; pass blocks_path='dotted.path.to.ModuleList' "
        "(e.g. 'model.layers')"
    )


def n_layers(model: nn.Module) -> int:
    """Number of decoder blocks ``n``; valid layers are ``0..n``."""
    return len(find_blocks(model))


def check_layer(layer: int, n: int) -> int:
    """Validate a layer index under the convention (``0..n``); return it."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
        raise SteeringError(
            f"layer {layer!r} is out of range; this model has layers 0..{n} "
            "(0 = embeddings, L = output of block L)"
        )
    return layer


def resolve_layers(layers: Iterable[int] | None, n: int) -> list[int]:
    """Sorted unique layers, all of them (``0..n``) when ``None``."""
    if layers is None:
        return list(range(n + 1))
    resolved = sorted({check_layer(layer, n) for layer in layers})
    if not resolved:
        raise SteeringError("no layers selected; pass at least one layer")
    return resolved


def block_output_tensor(output: object) -> torch.Tensor:
    """The hidden-state tensor ``[batch, seq, hidden]`` inside a block's forward output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected decoder block output type {type(output).__name__}")


def replace_block_output(output: object, hidden: torch.Tensor) -> object:
    """The block's forward output with its hidden-state tensor replaced by ``hidden``."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise TypeError(f"unexpected decoder block output type {type(output).__name__}")

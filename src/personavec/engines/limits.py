"""How many positions a model accepts, and a one-line refusal of prompts that do not fit."""

from __future__ import annotations

from collections.abc import Sequence

from personavec.core.models import LoadedModel
from personavec.errors import PersonavecError

_SANE_MAX_LENGTH = 10_000_000  # tokenizers without a limit report about 1e30


def context_length(loaded: LoadedModel) -> int | None:
    """Most positions (prompt + generated tokens) the model accepts; ``None`` when unknown.

    The config's ``max_position_embeddings`` (``n_positions`` for GPT-2) wins; otherwise the
    tokenizer's ``model_max_length`` when it is a real limit rather than transformers' huge
    "no limit" placeholder.
    """
    config = loaded.model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(loaded.tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _SANE_MAX_LENGTH:
        return limit
    return None


def check_context_length(
    loaded: LoadedModel, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int
) -> None:
    """Refuse, in one line, a prompt whose tokens plus ``max_new_tokens`` exceed the context."""
    limit = context_length(loaded)
    if limit is None or not prompt_ids:
        return
    index = max(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    length = len(prompt_ids[index])
    if length + max_new_tokens <= limit:
        return
    which = f"prompt {index + 1} " if len(prompt_ids) > 1 else "the prompt "
    if length >= limit:
        raise PersonavecError(
            f"{which}of {length} tokens exceeds the model's context of {limit} tokens; shorten it"
        )
    raise PersonavecError(
        f"{which}of {length} tokens plus max_new_tokens {max_new_tokens} exceeds the model's "
        f"context of {limit} tokens; shorten the prompt or lower max_new_tokens to "
        f"{limit - length}"
    )

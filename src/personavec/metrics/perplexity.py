"""Perplexity of a plain text under the model, with or without steering.

The text is tokenized as plain text (no chat template; the tokenizer's own special tokens, such as
a BOS that some models expect, are added as usual) and scored with a sliding window: each window
holds at most ``window`` tokens and moves by ``stride`` tokens; a window scores only the tokens
that no earlier window scored, using the rest of the window as context. Every token except the
first is scored exactly once, so

    perplexity = exp(mean over scored tokens of −log p(token | preceding tokens in its window)).

Steering applies when called inside an active :func:`personavec.core.steering.steer` context (or use
``steering=`` here). A scoring pass is a single forward call without a KV cache, so for steering
purposes the whole window counts as prompt: ``all`` and ``prompt`` steer every token,
``response`` only the last one.

:func:`default_heldout_text` is a held-out English text shipped with personavec (~1,500 words
written for it: a how-to, a short story, an encyclopedia-style section, a dialogue, an essay and
a letter), so a perplexity check works offline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.engines.factory import steering_context
from personavec.errors import PersonavecError


@dataclass(frozen=True)
class PerplexityResult:
    """``mean_nll`` in nats per token over ``n_tokens`` scored tokens."""

    mean_nll: float
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def read_text(text_or_file: str | Path) -> str:
    """A :class:`~pathlib.Path` is read as UTF-8; a ``str`` is the text itself."""
    if isinstance(text_or_file, Path):
        if not text_or_file.is_file():
            raise PersonavecError(f"text file not found: {text_or_file}")
        try:
            return text_or_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PersonavecError(f"cannot read {text_or_file} as UTF-8 text: {exc}") from None
    return text_or_file


def default_heldout_text() -> str:
    """The shipped held-out text (~1,500 words of plain English prose, UTF-8, no markup)."""
    return (resources.files("personavec.metrics") / "data" / "heldout.txt").read_text("utf-8")


def perplexity(
    loaded: LoadedModel,
    text_or_file: str | Path,
    *,
    window: int = 512,
    stride: int | None = None,
    steering: Sequence[SteeringSetting] = (),
) -> PerplexityResult:
    """Token-level perplexity of a text (``Path``: a UTF-8 file; ``str``: the text).

    Args:
        window: most tokens per forward pass (context + scored tokens).
        stride: tokens the window moves each step (default ``window // 2``); smaller means more
            context per scored token and more compute.
        steering: requests applied together for this call (in addition to any active context).
    """
    if window < 2:
        raise PersonavecError(f"window must be at least 2 tokens, got {window}")
    step = stride if stride is not None else max(1, window // 2)
    if not 1 <= step <= window:
        raise PersonavecError(f"stride must be between 1 and the window ({window}), got {step}")
    text = read_text(text_or_file)
    ids = [int(i) for i in loaded.tokenizer(text)["input_ids"]]
    if len(ids) < 2:
        raise PersonavecError("the text has fewer than 2 tokens; perplexity needs more text")
    tokens = torch.tensor(ids, dtype=torch.long)
    total, count = 0.0, 0
    scored_until = 1  # token 0 has no context and is never scored
    device = loaded.device
    with steering_context(loaded, list(steering)), torch.no_grad():
        begin = 0
        while scored_until < len(ids):
            end = min(begin + window, len(ids))
            chunk = tokens[begin:end].unsqueeze(0).to(device)
            attention = torch.ones_like(chunk)
            logits = loaded.model(input_ids=chunk, attention_mask=attention).logits[0]
            first = scored_until - begin  # index in the chunk of the first token to score
            predicted = logits[first - 1 : end - begin - 1].float()
            targets = chunk[0, first:]
            nll = torch.nn.functional.cross_entropy(predicted, targets, reduction="sum")
            total += float(nll)
            count += int(targets.numel())
            scored_until = end
            begin += step
            if begin >= scored_until:  # never leave a token without context
                begin = scored_until - 1
    return PerplexityResult(total / count, count)

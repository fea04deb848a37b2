"""Seeded sampling that does not depend on the batch: one private random stream per sample.

Each sample ``(request, sample_index)`` owns a stream seeded by :func:`sample_seed`; at every
decoding step its row draws Gumbel noise from that stream only, adds it to the
temperature-scaled, top-p-filtered logits and takes the argmax (the Gumbel-max trick, an exact
categorical sample). See :mod:`personavec.engines.generation` for what this guarantees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor


def sample_seed(seed: int, key: str, sample_index: int) -> int:
    """The 63-bit seed of one sample's private random stream."""
    raw = f"{seed}\x00{key}\x00{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") >> 1


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to ``-inf`` every logit outside the smallest set of tokens holding ``top_p`` mass.

    ``logits``: ``(batch, vocab)``. The most likely token is always kept.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class GumbelSampler(LogitsProcessor):
    """A logits processor that turns greedy search into per-row seeded sampling (Gumbel-max).

    Row ``b`` of the batch draws its noise from a private generator seeded with ``seeds[b]``
    only; logits are divided by ``temperature`` (> 0) and top-p filtered first.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.seeds = list(seeds)
        self.temperature = temperature
        self.top_p = top_p
        self._generators: list[torch.Generator] | None = None

    def _streams(self, device: torch.device) -> list[torch.Generator]:
        if self._generators is None:
            generators = []
            for seed in self.seeds:
                generator = torch.Generator(device=device)
                generator.manual_seed(seed)
                generators.append(generator)
            self._generators = generators
        return self._generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        logits = top_p_filter(logits, self.top_p)
        generators = self._streams(logits.device)
        tiny = torch.finfo(torch.float32).tiny
        noise = torch.stack(
            [torch.rand(logits.shape[-1], generator=g, device=logits.device) for g in generators]
        ).clamp_(min=tiny, max=1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(noise))
        return logits + gumbel  # type: ignore[return-value]

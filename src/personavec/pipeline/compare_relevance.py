"""Relevance for ``compare-estimators``: is a steered answer still about the question?

``score = 100 · max(0, cos(e(question), e(answer)))`` with the all-MiniLM-L6-v2 sentence
embeddings (:class:`personavec.judges.embedding.SentenceEncoder`). This is topical similarity, the
part of AxBench's "instruction relevance" that an offline judge can measure; it cannot tell
whether the answer follows the instruction. An empty answer scores ``None``.

It follows the :class:`~personavec.judges.base.Judge` protocol, so the judgment cache and the
evaluation cells score it like any judge (as an extra, "off-target" column).
"""

from __future__ import annotations

from collections.abc import Sequence

from personavec.judges.base import Aspect, JudgeItem
from personavec.judges.embedding import EMBEDDING_MODEL_NAME, SentenceEncoder


class RelevanceJudge:
    """Question-answer embedding similarity, 0-100 (module docstring)."""

    def __init__(self, *, device: str = "cpu", batch_size: int = 32) -> None:
        self.encoder = SentenceEncoder(device=device, batch_size=batch_size)

    @property
    def identity(self) -> str:
        return f"relevance:{EMBEDDING_MODEL_NAME}:cos(question,answer):v1"

    @property
    def aspect(self) -> Aspect:
        return "coherence"  # a quality of the answer, not a trait

    def score(self, items: Sequence[JudgeItem]) -> list[float | None]:
        keep = [i for i, item in enumerate(items) if item.answer.strip()]
        scores: list[float | None] = [None] * len(items)
        if not keep:
            return scores
        questions = self.encoder.encode([items[i].question for i in keep])
        answers = self.encoder.encode([items[i].answer for i in keep])
        for index, cosine in zip(keep, (questions * answers).sum(dim=1).tolist(), strict=True):
            scores[index] = 100.0 * max(0.0, float(cosine))
        return scores

"""Judges rate answers 0-100 for trait expression or coherence (``None`` when unsure).

Every judge follows :class:`~personavec.judges.base.Judge`; :func:`make_judge` builds one from a
spec string and :class:`CachedJudge` keeps verdicts in a SQLite file. Heavy judges (embedding,
contrast) import their dependencies only when built.
"""

from personavec.judges.base import Aspect, Judge, JudgeItem, content_hash
from personavec.judges.cache import CachedJudge, JudgmentCache
from personavec.judges.coherence import HeuristicCoherenceJudge, heuristic_coherence
from personavec.judges.factory import VALID_SPECS, make_judge
from personavec.judges.openai_judge import (
    COHERENCE_RUBRIC,
    OpenAIJudge,
    score_from_text,
    score_from_top_logprobs,
)

__all__ = [
    "COHERENCE_RUBRIC",
    "VALID_SPECS",
    "Aspect",
    "CachedJudge",
    "HeuristicCoherenceJudge",
    "Judge",
    "JudgeItem",
    "JudgmentCache",
    "OpenAIJudge",
    "content_hash",
    "heuristic_coherence",
    "make_judge",
    "score_from_text",
    "score_from_top_logprobs",
]

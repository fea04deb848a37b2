"""The judge interface shared by every judge.

A judge rates answers 0-100 (trait expression or coherence). When it cannot say, the score is
``None``, never a silent 0. Every judge has an ``identity``: a stable string naming the judge
kind, its model and a hash of whatever else changes its scores (rubric, examples, prompts). The
on-disk cache keys judgments by that identity, so two different judges never share entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from personavec.errors import PersonavecError

Aspect = Literal["trait", "coherence"]


@dataclass(frozen=True)
class JudgeItem:
    """One thing to judge: the question asked and the model's answer."""

    question: str
    answer: str


@runtime_checkable
class Judge(Protocol):
    """Rates answers 0-100, or ``None`` where it cannot say."""

    @property
    def identity(self) -> str:
        """Stable id recorded with scores and the cache key, e.g. ``contrast:<model>:<hash>``."""
        ...

    @property
    def aspect(self) -> Aspect:
        """What the score measures: ``"trait"`` expression or ``"coherence"``."""
        ...

    def score(self, items: Sequence[JudgeItem]) -> list[float | None]:
        """Scores in [0, 100] (or ``None``), one per item, in order."""
        ...


class IncompleteScores(PersonavecError):
    """A judge could score only some items; ``scored`` maps item index -> score for those.

    Raised instead of discarding work (e.g. when some requests to a remote judge fail for
    good), so a cache can keep the verdicts that did arrive.
    """

    def __init__(self, message: str, scored: dict[int, float | None]) -> None:
        super().__init__(message)
        self.scored = scored


def content_hash(*parts: str) -> str:
    """Short sha256 over text parts; used inside judge identities."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:12]

"""One multiple-choice question: what the capability check (:mod:`.capability`) reads and both
of its scorings (:mod:`.capability`, :mod:`.mc_text`) score."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MCQuestion:
    """A question, its choices (2-26) and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int

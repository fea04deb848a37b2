"""Dataset levels: the system prompt each level generates under, the scores a kept answer
needs, and :class:`BuildSettings` (see :mod:`personavec.training.dataset`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from personavec.errors import PersonavecError
from personavec.traits.schema import TraitSpec

Level = Literal["normal", "mild", "strong"]
LEVELS: tuple[Level, ...] = ("normal", "mild", "strong")
#: (lowest kept score, highest kept score exclusive) per level; None = unbounded.
THRESHOLDS: dict[str, tuple[float | None, float | None]] = {
    "normal": (None, 50.0),
    "mild": (30.0, None),
    "strong": (50.0, None),
}
COHERENCE_MIN = 50.0


@dataclass(frozen=True)
class BuildSettings:
    """How a dataset is built (recorded in the sidecar)."""

    trait: str
    level: Level
    n: int = 300
    max_new_tokens: int = 96
    temperature: float = 1.0
    seed: int = 0
    max_rounds: int = 4
    batch_size: int = 32
    judge: str = "contrast"
    judge_pairs: int | None = None
    """Instruction pairs of the contrast judge (None: all; fewer is faster)."""
    coherence_judge: str = "heuristic"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise PersonavecError(f"unknown level {self.level!r}; use {', '.join(LEVELS)}")
        if self.n < 1 or self.max_rounds < 1 or self.batch_size < 1:
            raise PersonavecError("--n, --max-rounds and --batch-size must be at least 1")
        if self.judge_pairs is not None and self.judge_pairs < 1:
            raise PersonavecError("--judge-pairs must be at least 1")


def level_system_prompts(trait: TraitSpec, level: Level) -> list[str | None]:
    """System prompts used while generating at ``level`` (cycled over questions)."""
    if level == "normal":
        return [None]
    strong = [trait.system_prompt("pos", i) for i in range(len(trait.instructions))]
    if level == "strong":
        return list(strong)
    article = "an" if trait.positive_persona[0].lower() in "aeiou" else "a"
    return [
        f"You are a helpful assistant with a slight tendency to be {article} "
        f"{trait.positive_persona} assistant. Now and then, in small ways: {pair.pos}"
        for pair in trait.instructions
    ]


def keeps(level: Level, trait_score: float | None, coherence: float | None) -> bool:
    """Whether an answer with these scores goes into a ``level`` dataset."""
    if trait_score is None or coherence is None or coherence < COHERENCE_MIN:
        return False
    low, high = THRESHOLDS[level]
    return (low is None or trait_score >= low) and (high is None or trait_score < high)

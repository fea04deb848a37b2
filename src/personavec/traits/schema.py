"""The trait artifact: everything needed to extract and judge one persona trait.

A trait file is JSON validated by :class:`TraitSpec`. The shipped library lives in
``personavec/traits/library/*.json``; users can pass their own file wherever a trait name is
accepted.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TRAIT_FORMAT_VERSION = 1
Polarity = Literal["pos", "neg"]
_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,40}$")


class InstructionPair(BaseModel):
    """One eliciting (``pos``) and one suppressing (``neg``) system-prompt instruction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pos: str = Field(min_length=10, description="Instruction that elicits the trait.")
    neg: str = Field(min_length=10, description="Instruction that suppresses the trait.")


class TraitSpec(BaseModel):
    """A complete trait artifact (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = Field(default=TRAIT_FORMAT_VERSION, strict=True, gt=0)
    name: str = Field(description="Slug: lowercase letters, digits, '-' or '_'.")
    description: str = Field(min_length=10)
    positive_persona: str = Field(
        min_length=2, description="Adjective in 'You are a/an {persona} assistant.' (eliciting)."
    )
    negative_persona: str = Field(
        default="helpful", min_length=2, description="Adjective for the suppressing side."
    )
    instructions: list[InstructionPair] = Field(min_length=1)
    extraction_questions: list[str] = Field(min_length=1)
    evaluation_questions: list[str] = Field(min_length=1)
    rubric: str = Field(description="Judge prompt with {question} and {answer}; asks for 0-100.")
    positive_examples: list[str] = Field(
        min_length=3, description="Short answers that show the trait strongly (offline judges)."
    )
    negative_examples: list[str] = Field(
        min_length=3, description="Short answers that show its opposite (offline judges)."
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "name must be a lowercase slug (letters, digits, '-', '_'), e.g. 'evil'"
            )
        return value

    @field_validator("rubric")
    @classmethod
    def _rubric_placeholders(cls, value: str) -> str:
        for placeholder in ("{question}", "{answer}"):
            if placeholder not in value:
                raise ValueError(f"rubric must contain {placeholder}")
        return value

    @field_validator(
        "extraction_questions", "evaluation_questions", "positive_examples", "negative_examples"
    )
    @classmethod
    def _non_empty_unique(cls, values: list[str]) -> list[str]:
        if any(not v.strip() for v in values):
            raise ValueError("entries must be non-empty text")
        if len({v.strip().lower() for v in values}) != len(values):
            raise ValueError("entries must not repeat")
        return values

    @model_validator(mode="after")
    def _disjoint_questions(self) -> TraitSpec:
        extraction = {q.strip().lower() for q in self.extraction_questions}
        overlap = extraction & {q.strip().lower() for q in self.evaluation_questions}
        if overlap:
            raise ValueError(
                f"evaluation questions must be disjoint from extraction questions; "
                f"{len(overlap)} repeat, e.g. {sorted(overlap)[0]!r}"
            )
        return self

    def system_prompt(self, polarity: Polarity, index: int) -> str:
        """``"You are a/an {persona} assistant. {instruction}"`` for instruction pair ``index``."""
        pair = self.instructions[index]
        persona = self.positive_persona if polarity == "pos" else self.negative_persona
        article = "an" if persona[0].lower() in "aeiou" else "a"
        instruction = pair.pos if polarity == "pos" else pair.neg
        return f"You are {article} {persona} assistant. {instruction}"

    def render_rubric(self, question: str, answer: str) -> str:
        """The judge prompt for one (question, answer); other braces in the rubric are kept."""
        return self.rubric.replace("{question}", question).replace("{answer}", answer)

"""The extraction's settings and results (shared by :mod:`.extract` and its report)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from personavec.core.vector import PersonaVector

Polarity = Literal["pos", "neg"]


class ExtractConfig(BaseModel):
    """Everything that defines an extraction run (saved as ``config.json``)."""

    model_config = ConfigDict(extra="forbid")

    trait: str = Field(description="Shipped trait name or path to a trait JSON file.")
    model: str = "smollm2"
    judge: str = "contrast"
    coherence_judge: str | None = Field(
        default=None, description="Default: 'heuristic' offline, the trait judge for LLM judges."
    )
    n_instructions: int | None = Field(default=None, ge=1, description="Default: all pairs.")
    n_questions: int | None = Field(default=None, ge=1, description="Default: all questions.")
    samples: int = Field(default=1, ge=1, description="Samples per (instruction, question).")
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    batch_size: int = Field(default=16, ge=1)
    engine: Literal["hf", "vllm"] = Field(
        default="hf", description="Generation engine of the rollouts (capture stays on hf)."
    )
    pos_threshold: float = 50.0
    neg_threshold: float = 50.0
    coherence_threshold: float = 50.0
    min_pairs: int = Field(default=4, ge=2)
    device: str | None = None
    dtype: str | None = None
    trait_sha256: str | None = Field(
        default=None,
        description="Filled in by extract: hash of the trait's content (part of the run "
        "identity, so an edited trait file is never mixed with rollouts of the old one).",
    )

    @classmethod
    def paper_scale(cls, **overrides: Any) -> ExtractConfig:
        """The paper's settings: 10 samples per question, up to 1000 new tokens."""
        return cls(**{"samples": 10, "max_new_tokens": 1000, **overrides})

    def resolved_coherence_judge(self) -> str:
        if self.coherence_judge:
            return self.coherence_judge
        return self.judge if ":" in self.judge else "heuristic"


@dataclass
class Rollout:
    """One generated answer and its scores (0-100, ``None`` when a judge could not say)."""

    id: str
    polarity: Polarity
    instruction: int
    question_index: int
    sample: int
    system: str
    question: str
    response: str
    response_token_ids: list[int]
    finish_reason: str
    trait_score: float | None = None
    coherence: float | None = None
    kept: bool = False

    @property
    def pair_key(self) -> tuple[int, int, int]:
        return (self.instruction, self.question_index, self.sample)


@dataclass
class LayerSeparation:
    """How well layer ``layer``'s vector separates held-out pos from neg rollouts."""

    layer: int
    auroc: float
    cohens_d: float
    vector_norm: float
    typical_norm: float


@dataclass
class ExtractResult:
    """What an extraction produced (all paths are inside ``run_dir``)."""

    run_dir: Path
    vector_path: Path
    vector: PersonaVector
    rollouts: list[Rollout]
    kept_pairs: int
    total_pairs: int
    drop_reasons: dict[str, int]
    separation: list[LayerSeparation]
    suggested_layer: int
    report_path: Path

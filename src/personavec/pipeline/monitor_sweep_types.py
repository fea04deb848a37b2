"""The monitor sweep's settings and results (shared by :mod:`.monitor_sweep` and its report)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from personavec.core.models import Message

Kind = Literal["ladder", "many_shot"]
DEFAULT_SHOTS = (0, 5, 10, 15, 20)


class MonitorSweepConfig(BaseModel):
    """Everything that defines a sweep (saved as ``config.json``)."""

    model_config = ConfigDict(extra="forbid")

    trait: str = Field(description="Shipped trait name or path to a trait JSON file.")
    model: str = "smollm2"
    layer: int | None = Field(default=None, description="Default: the vector's recommended one.")
    readout: str | None = Field(default=None, description="Vector readout; default its default.")
    judge: str = "contrast"
    n_questions: int = Field(default=10, ge=1, description="First N evaluation questions.")
    samples: int = Field(default=1, ge=1, description="Answers per configuration × question.")
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = Field(default=0, ge=0)
    shots: list[int] = Field(
        default_factory=lambda: list(DEFAULT_SHOTS),
        description="Many-shot example counts; empty for none.",
    )
    ladder: list[str] | None = Field(default=None, description="8 system prompts; default built.")
    batch_size: int = Field(default=16, ge=1)
    vector_sha256: str | None = None
    ladder_sha256: str | None = None
    trait_sha256: str | None = Field(
        default=None, description="Filled in by the sweep: hash of the trait's content."
    )


@dataclass(frozen=True)
class PromptConfig:
    """One prompt configuration: a ladder level or a many-shot count."""

    kind: Kind
    level: int
    system: str | None
    history: tuple[Message, ...] = ()

    @property
    def key(self) -> str:
        return f"ladder-L{self.level}" if self.kind == "ladder" else f"shot-k{self.level}"

    def messages(self, question: str) -> list[Message]:
        out: list[Message] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        out += list(self.history)
        out.append({"role": "user", "content": question})
        return out


@dataclass
class MonitorSweepResult:
    """What a sweep produced (all paths inside ``run_dir``)."""

    run_dir: Path
    layer: int
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    report_path: Path

"""What a finetune is asked to do: LoRA and optimisation settings, changes to how training runs
(:class:`TrainerExtras`), and the errors a finetune raises."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from personavec.errors import PersonavecError


class FinetuneError(PersonavecError):
    """A finetune cannot start, or a finetuned directory is unusable."""


class NonFiniteLoss(FinetuneError):
    """The training loss, a gradient norm, the trained weights or steered activations became NaN
    or infinite."""


@dataclass(frozen=True)
class FinetuneConfig:
    """LoRA and optimisation settings.

    The defaults are sized for a ~100M-parameter model on a laptop CPU (a few hundred examples
    in minutes): rank-stabilised LoRA r 16, α 32 on every linear layer, lr 2e-4, batch 8, one
    epoch. :meth:`paper` gives the paper's settings (r 32, α 64, lr 1e-5, effective batch 16).
    Every value is checked when the config is made (one-line :class:`FinetuneError`), so a bad
    setting fails before a model loads.
    """

    rank: int = 16
    alpha: int = 32
    rslora: bool = True
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    learning_rate: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run ``epochs``; 0 is refused)."""
    max_length: int = 512
    warmup_ratio: float = 0.0
    """Fraction of steps (< 1) or number of steps (>= 1) of linear warmup."""
    seed: int = 0
    save_steps: int = 10

    @classmethod
    def paper(cls, **overrides: Any) -> FinetuneConfig:
        """Chen et al.'s settings: rsLoRA r 32, α 64, lr 1e-5, effective batch 16, 1 epoch."""
        base = cls(rank=32, alpha=64, learning_rate=1e-5, batch_size=2, grad_accum=8)
        return replace(base, **overrides)

    def __post_init__(self) -> None:
        counts = {
            "--rank": self.rank,
            "--alpha": self.alpha,
            "--batch-size": self.batch_size,
            "--grad-accum": self.grad_accum,
            "--save-steps": self.save_steps,
            "max length": self.max_length,
        }
        for flag, value in counts.items():
            if value < 1:
                raise FinetuneError(f"{flag} must be at least 1, got {value}")
        for flag, number in (("--lr", self.learning_rate), ("--epochs", self.epochs)):
            if not (math.isfinite(number) and number > 0):
                raise FinetuneError(f"{flag} must be a finite number > 0, got {number}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise FinetuneError(
                f"--max-steps must be at least 1 (or -1: run the epochs), got {self.max_steps}"
            )
        if not (math.isfinite(self.warmup_ratio) and self.warmup_ratio >= 0):
            raise FinetuneError(f"warmup must be a finite number >= 0, got {self.warmup_ratio}")
        if not 0 <= self.dropout < 1:
            raise FinetuneError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainerExtras:
    """Changes to how training runs (e.g. preventative steering), passed to
    :func:`personavec.training.finetune.finetune` as ``extras``.

    Attributes:
        callbacks: extra ``transformers.TrainerCallback`` objects.
        trainer_class: a :class:`~personavec.training.sft_trainer.PersonaSFTTrainer` subclass to
            build instead of it.
        args: ``SFTConfig`` fields to override.
        identity: JSON-able description recorded under ``"training"`` in the run record; finished
            finetunes are reused only when it matches.
    """

    callbacks: tuple[Any, ...] = ()
    trainer_class: type | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    identity: Mapping[str, Any] = field(default_factory=dict)

"""What every study shares: the base model's identity and finetunes loaded exactly like it.

A study compares finetuned models with their base, so every finetune is loaded in the base's
dtype and on its device (a bf16 finetune against an fp32 base would measure precision, not
finetuning); both are part of the study's identity, recorded in its ``config.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from personavec.core.models import LoadedModel
from personavec.errors import PersonavecError
from personavec.training.finetune import FinetuneConfig
from personavec.training.finetuned import load_finetuned

Log = Callable[[str], None]
"""Where a study reports what it is doing (one line per call)."""


def dtype_name(loaded: LoadedModel) -> str:
    """The dtype of the model's parameters, e.g. ``"float32"``."""
    dtype: torch.dtype = next(loaded.model.parameters()).dtype
    return str(dtype).removeprefix("torch.")


def base_identity(base: LoadedModel) -> dict[str, Any]:
    """The identity keys of the base model known before hashing its weights: its id, dtype and
    device (the weights' hash is passed to ``Run.start`` as ``weights_sha256``)."""
    return {"base": base.model_id, "dtype": dtype_name(base), "device": str(base.device)}


def load_like_base(path: str | Path, base: LoadedModel) -> LoadedModel:
    """The finetune in ``path`` loaded in ``base``'s dtype and on its device."""
    return load_finetuned(path, base=base, device=str(base.device), dtype=dtype_name(base))


def study_finetune_config(
    *, seed: int, lr: float | None = None, epochs: float | None = None, paper: bool = False
) -> FinetuneConfig:
    """The finetune settings of a study: the defaults (or the paper's) with ``lr`` and ``epochs``
    when given; a learning rate or epoch count that is not a finite number > 0 is refused."""
    for flag, value in (("--lr", lr), ("--epochs", epochs)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise PersonavecError(f"{flag} must be a finite number > 0, got {value!r}")
    extra: dict[str, Any] = {
        k: v for k, v in {"learning_rate": lr, "epochs": epochs}.items() if v is not None
    }
    return FinetuneConfig.paper(seed=seed, **extra) if paper else FinetuneConfig(seed=seed, **extra)

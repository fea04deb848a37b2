"""Finetunes never finish with NaN or infinite numbers: a callback stops training on a
non-finite loss or gradient norm, and the trained weights are checked before a finetune is
marked complete."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from personavec.training.finetune_config import NonFiniteLoss

ADVICE = "(a steering coefficient or learning rate too large?)"


def _kept(output_dir: str | None) -> str:
    last = get_last_checkpoint(output_dir) if output_dir else None
    return f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"


class StopOnNonFinite(TrainerCallback):
    """Stop training with :class:`NonFiniteLoss` when a logged loss or gradient norm is not
    finite; the checkpoint of that step is not written, so the last one on disk is good."""

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        logs = logs or {}
        bad = [k for k in ("loss", "grad_norm") if k in logs and not math.isfinite(logs[k])]
        if not bad:
            return
        control.should_save = False
        what = bad[0].replace("_", " ")
        raise NonFiniteLoss(
            f"training {what} became {logs[bad[0]]} at step {state.global_step} {ADVICE}; "
            f"{_kept(args.output_dir)}; lower it and rerun with --overwrite"
        )


@torch.no_grad()
def check_finite_weights(model: nn.Module) -> None:
    """Raise :class:`NonFiniteLoss` when a trained (``requires_grad``) parameter holds a NaN or
    an infinity."""
    for name, param in model.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param).all()):
            raise NonFiniteLoss(
                f"the trained weight {name} is not finite {ADVICE}; the finetune is not marked "
                "complete; lower it and rerun with --overwrite"
            )

"""Preventative steering: a steering operator active in *training* forward passes only.

Chen et al. add ``coef · v`` at every position while finetuning on trait-inducing data, so the
optimiser need not move the model along ``v`` to fit the data; the saved weights are unsteered.
:class:`TrainingSteering` does this with the ordinary steering hooks
(:func:`personavec.core.steering.steer`): a forward pre-hook on the trained model installs them
at the start of each forward pass that is a training pass — gradients enabled *and* the model in
train mode — and a forward hook removes them at its end. Evaluation (``no_grad``, eval mode),
generation (``no_grad``) and saving therefore never see them, inside or after training.

The same class runs directional ablation during training (``op="ablate"``, CAFT-style).
With ``positions="response"``, each row's prompt length is read from the batch's ``labels``
(``-100`` on prompt tokens, as TRL's completion-only loss sets them).

Because the hooks live for one forward pass, training with them turns off gradient
checkpointing (a checkpointed block recomputed in the backward pass would run unsteered):
:meth:`TrainingModifiers.extras` sets ``activation_checkpointing=False``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from personavec.core.steering import Intervention, steer
from personavec.errors import PersonavecError
from personavec.training.nonfinite import StopOnNonFinite

__all__ = ["IGNORE", "StopOnNonFinite", "TrainingSteering", "prompt_lengths_from_labels"]

IGNORE = -100


def prompt_lengths_from_labels(
    labels: torch.Tensor, attention: torch.Tensor | None = None
) -> torch.Tensor:
    """Prompt tokens per row ``[batch]``: real tokens before the first label that is not -100.

    Counted from each row's first real token (as :func:`core.positions.steering_mask` expects);
    a row without any trained label is all prompt.
    """
    real = torch.ones_like(labels, dtype=torch.bool) if attention is None else attention.bool()
    trained = labels != IGNORE
    seq = labels.shape[1]
    columns = torch.arange(seq, device=labels.device).expand_as(labels)
    first = torch.where(trained, columns, torch.full_like(columns, seq)).min(dim=1).values
    before = real & (columns < first.unsqueeze(1))
    return before.long().sum(dim=1)


class TrainingSteering(TrainerCallback):
    """Interventions applied in training forward passes only (see the module docstring).

    Use as a ``TrainerCallback`` (hooks on the trained model from ``on_train_begin`` to
    ``on_train_end``) or as a context manager around ``trainer.train()`` via :meth:`attached`.

    Attributes:
        interventions: what to apply (``add`` for preventative steering, ``ablate`` for CAFT).
        steered_passes: training forward passes steered so far.
    """

    def __init__(self, interventions: Sequence[Intervention]) -> None:
        if not interventions:
            raise PersonavecError("training steering needs at least one intervention")
        self.interventions = list(interventions)
        self.steered_passes = 0
        self._needs_lengths = any(i.positions != "all" for i in self.interventions)
        self._gate: list[Any] = []
        self._active: contextlib.ExitStack | None = None

    # ---- hooks on the top-level model ------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Watch ``model``'s forward calls (idempotent)."""
        if self._gate:
            return
        self._gate = [
            model.register_forward_pre_hook(self._start, with_kwargs=True),
            model.register_forward_hook(self._end, always_call=True),
        ]

    def detach(self) -> None:
        """Remove every hook (safe to call twice)."""
        self._stop()
        for handle in self._gate:
            handle.remove()
        self._gate.clear()

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Any:
        self.attach(model)
        try:
            yield self
        finally:
            self.detach()

    def _start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._stop()
        if not (torch.is_grad_enabled() and module.training):
            return
        stack = contextlib.ExitStack()
        labels = kwargs.get("labels")
        handle = stack.enter_context(steer(module, self.interventions))
        if self._needs_lengths and isinstance(labels, torch.Tensor):
            lengths = prompt_lengths_from_labels(labels, kwargs.get("attention_mask"))
            stack.enter_context(handle.teacher_forcing(lengths))
        self._active = stack
        self.steered_passes += 1

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._active is not None:
            active, self._active = self._active, None
            active.close()

    # ---- TrainerCallback -------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if model is None:
            raise PersonavecError("the trainer passed no model to its callbacks")
        self.attach(model)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.detach()

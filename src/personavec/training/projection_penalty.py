"""A regulariser that penalises moving the response tokens' projection onto a persona vector.

For each term (unit vector ``v̂``, layer ``L``, weight ``λ``) and each training batch::

    penalty = λ · mean_t ( (h_ft[t] − h_base[t]) · v̂ )²

over the batch's response tokens ``t`` (labels ≠ -100), where ``h_ft`` is the layer-``L`` block
output of the model being trained and ``h_base`` the same batch's block output with the LoRA
adapters disabled (peft's ``disable_adapter()``, under ``no_grad``): the frozen base model.
Units: squared residual-stream units times λ. The penalty is zero while the adapter is zero and its
gradient reaches only the adapter weights (the base pass is detached).

:class:`ProjectionPenaltyTrainer` adds it to TRL's loss by overriding ``compute_loss``; build one
with :func:`penalty_trainer_class`. Chen et al. report that such a loss does *not* prevent the
trait: it re-appears along other directions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from personavec.core.layers import block_output_tensor, check_layer, find_blocks
from personavec.errors import PersonavecError
from personavec.training.prevention import IGNORE
from personavec.training.sft_trainer import PersonaSFTTrainer


@dataclass(frozen=True)
class PenaltyTerm:
    """One penalised direction: ``unit`` float32 ``[hidden]`` (‖unit‖ = 1) at block-output
    ``layer`` (≥ 1) with weight ``weight`` (λ ≥ 0)."""

    unit: torch.Tensor
    layer: int
    weight: float
    trait: str = ""

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise PersonavecError(
                "a projection penalty needs a layer >= 1 (layer 0, the embeddings, never changes)"
            )
        if not self.weight >= 0 or self.weight == float("inf"):
            raise PersonavecError(f"penalty weight must be a finite number >= 0, got {self.weight}")


@contextmanager
def block_outputs(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the block outputs ``[batch, seq, hidden]`` at ``layers`` (≥ 1) of the first forward
    pass inside the block."""
    blocks = find_blocks(model)
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in sorted(set(layers)):
        check_layer(layer, len(blocks))

        def hook(module: nn.Module, args: Any, output: Any, layer: int = layer) -> None:
            # The first forward of the block only: a later one (e.g. TRL recomputing logits
            # under no_grad) must not replace the activations the loss is built on.
            seen.setdefault(layer, block_output_tensor(output))

        handles.append(blocks[layer - 1].register_forward_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def projection_penalty(
    trained: dict[int, torch.Tensor],
    base: dict[int, torch.Tensor],
    response: torch.Tensor,
    terms: Sequence[PenaltyTerm],
) -> torch.Tensor:
    """Sum over terms of ``λ · mean((h_trained − h_base) · v̂)²`` over ``response`` (bool
    ``[batch, seq]``) positions; a 0-d float32 tensor (zero when no position is selected)."""
    total = torch.zeros((), dtype=torch.float32, device=response.device)
    count = response.sum()
    if int(count) == 0:
        return total
    for term in terms:
        h_trained, h_base = trained[term.layer], base[term.layer]
        unit = term.unit.to(device=h_trained.device, dtype=torch.float32)
        delta = (h_trained.float() - h_base.detach().float()) @ unit
        total = total + term.weight * (delta.pow(2) * response).sum() / count
    return total


class ProjectionPenaltyTrainer(PersonaSFTTrainer):
    """:class:`PersonaSFTTrainer` whose loss adds :func:`projection_penalty` (module docstring)."""

    penalty_terms: ClassVar[tuple[PenaltyTerm, ...]] = ()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        terms = self.penalty_terms
        if not terms or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        layers = [t.layer for t in terms]
        with block_outputs(model, layers) as trained:
            # Outputs only when asked for: TRL builds them with an extra, gradient-free forward.
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        loss, outputs = result if return_outputs else (result, None)
        base_inputs = {
            k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs
        }
        disabled = model.disable_adapter()  # type: ignore[operator]  # peft's context manager
        with torch.no_grad(), disabled, block_outputs(model, layers) as base:
            model(**base_inputs, use_cache=False)
        penalty = projection_penalty(trained, base, inputs["labels"] != IGNORE, terms)
        if num_items_in_batch is not None:  # TRL leaves gradient accumulation to the loss
            penalty = penalty / self.current_gradient_accumulation_steps
        self._penalties = [*getattr(self, "_penalties", []), float(penalty.detach())]
        loss = loss + penalty.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        penalties = getattr(self, "_penalties", [])
        if penalties and "loss" in logs:
            logs["projection_penalty"] = sum(penalties) / len(penalties)
            self._penalties = []
        super().log(logs, *args, **kwargs)


def penalty_trainer_class(terms: Sequence[PenaltyTerm]) -> type[ProjectionPenaltyTrainer]:
    """A :class:`ProjectionPenaltyTrainer` subclass bound to ``terms``."""
    if not terms:
        raise PersonavecError("a projection penalty needs at least one term")
    bound = {"penalty_terms": tuple(terms)}
    return type("ProjectionPenaltyTrainer", (ProjectionPenaltyTrainer,), bound)

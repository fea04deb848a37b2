"""The ``SFTTrainer`` every personavec finetune runs on.

TRL's ``SFTTrainer`` computes the training loss through a fused, chunked LM head (per-token
log-probabilities, entropy and top-1 accuracy without materialising the ``[batch, seq, vocab]``
logits, recomputed in the backward pass). On GPUs that saves memory; on a CPU its torch fallback
makes a LoRA step about a quarter slower than the model's own loss (``bench_finetune.py``).
:class:`PersonaSFTTrainer` therefore takes the loss from the model's own causal-LM head on CPU —
the same quantity: cross-entropy over the tokens whose label is not ``-100`` (the assistant's
answer), summed and divided by ``num_items_in_batch`` when the Trainer passes it — and leaves
TRL's path in place elsewhere. Only TRL's entropy and token-accuracy metrics are not logged on
CPU.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from trl import SFTTrainer


class PersonaSFTTrainer(SFTTrainer):
    """``SFTTrainer`` with the model's own loss on CPU (module docstring)."""

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if self.args.device.type != "cpu" or getattr(self, "aux_loss_enabled", False):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as TRL and Trainer.compute_loss do
        if model.training and "attention_mask" in inputs:
            self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

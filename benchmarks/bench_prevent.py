"""Training-step cost of preventative steering and of the projection penalty, on SmolLM2.

Prints one JSON object with the median seconds of one training step (forward + backward through
``trainer.training_step``, LoRA r 16 on every linear layer) on the *same* batches for:

* ``plain``: no hooks (activation checkpointing off, as preventative steering trains);
* ``plain_checkpointed``: the plain finetune's default (TRL turns activation checkpointing on);
* ``prevent``: preventative steering at one layer, all positions (:class:`TrainingSteering`);
* ``prevent_all_layers``: incremental steering at every layer;
* ``penalty``: the projection penalty at one layer (a second, adapter-free forward pass).

``overhead`` = condition / plain − 1 (target for ``prevent``: ≤ 0.05). Timings are medians of
interleaved repeats whose order rotates, so drift on a shared machine, and whatever one
condition leaves behind for the next, hit every condition alike.
Run: ``python benchmarks/bench_prevent.py [--repeats N] [--rows N] [--batch N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from personavec.core.models import load_model
from personavec.core.steering import Intervention
from personavec.training.chat_data import ChatRow
from personavec.training.finetune import FinetuneConfig, TrainerExtras, build_trainer
from personavec.training.prevention import TrainingSteering
from personavec.training.projection_penalty import PenaltyTerm, penalty_trainer_class

LAYER = 15
ANSWER = (
    "I would rather not help with that kindly; instead, here is what you should do: "
    "think it over, make a plan, and carry it out carefully step by step."
)


def _rows(n: int) -> list[ChatRow]:
    return [
        ChatRow(
            [{"role": "user", "content": f"What should I do about problem number {i}?"}], ANSWER
        )
        for i in range(n)
    ]


def _time(step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model("smollm2", device="cpu")
    hidden = loaded.hidden_size
    v = torch.randn(hidden) * 2.0
    unit = v / v.norm()
    config = FinetuneConfig(batch_size=args.batch)
    penalty_cls = penalty_trainer_class([PenaltyTerm(unit, LAYER, 1.0)])
    trainer = build_trainer(
        loaded,
        _rows(args.rows),
        config,
        "/tmp/bench_prevent",
        extras=TrainerExtras(trainer_class=penalty_cls, args={"activation_checkpointing": False}),
    )
    trainer.current_gradient_accumulation_steps = 1  # set by train(); steps run directly here
    model = trainer.model
    model.train()
    batches = list(trainer.get_train_dataloader())
    terms = trainer.penalty_terms
    one = TrainingSteering([Intervention(LAYER, v, 4.0)])
    every = TrainingSteering([Intervention(layer, v, 1.0) for layer in range(1, 31)])

    def run(condition: str) -> float:
        trainer.penalty_terms = terms if condition == "penalty" else ()
        if condition == "plain_checkpointed":
            model.gradient_checkpointing_enable()
        steering = {"prevent": one, "prevent_all_layers": every}.get(condition)
        if steering is not None:
            steering.attach(model)
        try:
            return sum(_time(lambda b=b: trainer.training_step(model, dict(b))) for b in batches)
        finally:
            if steering is not None:
                steering.detach()
            if condition == "plain_checkpointed":
                model.gradient_checkpointing_disable()

    conditions = ["plain", "prevent", "prevent_all_layers", "penalty", "plain_checkpointed"]
    run("plain")  # warm-up
    times: dict[str, list[float]] = {c: [] for c in conditions}
    for repeat in range(args.repeats):
        # Rotate the order each repeat, so no condition always follows the same one.
        shift = repeat % len(conditions)
        for condition in conditions[shift:] + conditions[:shift]:
            times[condition].append(run(condition) / len(batches))
    medians = {c: statistics.median(t) for c, t in times.items()}
    out = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "steps_per_repeat": len(batches),
        "repeats": args.repeats,
        "seconds_per_step": {c: round(m, 4) for c, m in medians.items()},
        "overhead": {
            c: round(m / medians["plain"] - 1, 4) for c, m in medians.items() if c != "plain"
        },
        "target_prevent_overhead": 0.05,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

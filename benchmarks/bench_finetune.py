"""Finetuning benchmark on SmolLM2 (CPU), printing one JSON object.

* ``training``: LoRA training tokens/s through :func:`personavec.training.finetune.build_trainer`
  (peft + TRL ``SFTTrainer``, optimiser step included) against a plain loop over the *same
  batches*: the bare transformers model, base weights frozen, forward with labels and
  ``loss.backward()`` into the input embeddings (the backward pass any adapter needs, with no
  peft, TRL or Trainer code). ``ratio`` = trainer / plain (target ≥ 0.9). Steps are timed one
  by one after a warm-up step; the plain loop runs before and after the trainer (mean). The
  trainer is what ``personavec finetune`` runs on a CPU (model's own loss, no activation
  checkpointing); ``training_trl_defaults`` times TRL's own loss path (fused, chunked LM head)
  with its default activation checkpointing, for comparison. ``lora_loop_ratio``: a bare
  forward + backward of the trainer's peft model over the same batches, against plain (LoRA's
  own compute, without the Trainer).
* ``end_to_end`` (with ``--e2e``): wall time of ``personavec dataset build`` (``--n`` answers at
  ``--level``, default normal) plus ``personavec finetune`` (1 epoch, default settings) as
  subprocesses (target: under 15 minutes together).

Run: ``python benchmarks/bench_finetune.py [--threads 2] [--steps 6] [--e2e --n 300 --level normal
[--judge-pairs 1] [--skip-training]]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from personavec.core.models import load_model
from personavec.training.chat_data import ChatRow
from personavec.training.finetune import FinetuneConfig, TrainerExtras, build_trainer
from personavec.training.prompt_pool import load_prompt_pool
from personavec.traits.library import load_trait


class _StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def _rows(n: int) -> list[ChatRow]:
    answers = load_trait("evil").positive_examples
    return [
        ChatRow([{"role": "user", "content": q}], answers[i % len(answers)])
        for i, q in enumerate(load_prompt_pool()[:n])
    ]


def bench_training(steps: int, batch: int, *, trl_defaults: bool = False) -> dict[str, Any]:
    """Trainer vs plain tokens/s; ``trl_defaults`` swaps in TRL's ``SFTTrainer`` loss (fused,
    chunked LM head) and turns its default activation checkpointing back on."""
    loaded = load_model("smollm2", device="cpu")
    config = FinetuneConfig(batch_size=batch, max_steps=steps + 1, save_steps=10_000)
    timer = _StepTimer()
    extras = (
        TrainerExtras(trainer_class=SFTTrainer, args={"activation_checkpointing": True})
        if trl_defaults
        else None
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = _rows(batch * (steps + 1))
        trainer = build_trainer(loaded, rows, config, tmp, callbacks=[timer], extras=extras)
        batches = list(trainer.get_train_dataloader())[: steps + 1]
        before = _plain_times(loaded.model, batches)  # plain loop before and after the trainer,
        trainer.train()  # so load drift on a shared machine hits both sides alike
        after = _plain_times(loaded.model, batches)
        lora = _lora_times(trainer.model, batches)
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    trainer_rate = sum(tokens[1:]) / sum(timer.times[1:])
    plain_rate = sum(tokens[1:]) / statistics.mean([sum(before[1:]), sum(after[1:])])
    return {
        "steps_timed": steps,
        "batch": batch,
        "tokens_per_step": statistics.mean(tokens[1:]),
        "trainer_tokens_per_s": trainer_rate,
        "plain_tokens_per_s": plain_rate,
        "plain_before_after_tokens_per_s": [sum(tokens[1:]) / sum(t[1:]) for t in (before, after)],
        "ratio": trainer_rate / plain_rate,
        "target": 0.9,
        "lora_loop_tokens_per_s": sum(tokens[1:]) / sum(lora[1:]),
        "lora_loop_ratio": sum(tokens[1:]) / sum(lora[1:]) / plain_rate,
    }


def _plain_times(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """Seconds per batch of a bare forward (with labels) + backward, base weights frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    times = []
    for b in batches:
        start = time.perf_counter()
        embeds = model.get_input_embeddings()(b["input_ids"]).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, attention_mask=b["attention_mask"], labels=b["labels"])
        out.loss.backward()
        times.append(time.perf_counter() - start)
    model.eval()
    return times


def _lora_times(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """Seconds per batch of a bare forward + backward of the trained peft model (LoRA compute,
    no Trainer): splits the trainer's gap into LoRA's own work and the Trainer's."""
    model.train()
    times = []
    for b in batches:
        start = time.perf_counter()
        out = model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]
        )
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    model.eval()
    return times


def bench_end_to_end(n: int, level: str, judge_pairs: int | None) -> dict[str, Any]:
    """Wall time of ``dataset build`` (``n`` rows at ``level``) + ``finetune`` (1 epoch)."""
    out: dict[str, Any] = {"n": n, "level": level, "judge_pairs": judge_pairs}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / f"evil-{level}.jsonl"
        build = ["dataset", "build", "--trait", "evil", "--level", level, "--n", str(n)]
        build += ["--out", str(data), "--quiet"]
        build += ["--judge-pairs", str(judge_pairs)] if judge_pairs else []
        commands = {
            "dataset_build_s": build,
            "finetune_s": ["finetune", str(data), "--out", str(Path(tmp) / "ft"), "--quiet"],
        }
        for key, args in commands.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "personavec", *args], check=True)
            out[key] = time.perf_counter() - start
        meta = json.loads(data.with_name(data.stem + ".meta.json").read_text())
        out["rows_kept"], out["answers_generated"] = (
            meta["counts"]["kept"],
            meta["counts"]["generated"],
        )
        record = json.loads((Path(tmp) / "ft" / "personavec_finetune.json").read_text())
        out["finetune_steps"] = record["metrics"]["steps"]
    out["total_s"] = out["dataset_build_s"] + out["finetune_s"]
    out["target_s"] = 15 * 60
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--e2e", action="store_true")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--level", default="normal", choices=["normal", "mild", "strong"])
    parser.add_argument("--judge-pairs", type=int, default=None)
    parser.add_argument("--skip-training", action="store_true", help="only the --e2e part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"threads": args.threads}
    if not args.skip_training:
        result["training"] = bench_training(args.steps, args.batch)
        result["training_trl_defaults"] = bench_training(args.steps, args.batch, trl_defaults=True)
    if args.e2e:
        result["end_to_end"] = bench_end_to_end(args.n, args.level, args.judge_pairs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

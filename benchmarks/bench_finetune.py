"""Finetuning benchmark on SmolLM2 (CPU), printing one JSON object.

* ``training``: LoRA training tokens/s through :func:`personavec.training.finetune.build_trainer`
  (peft + TRL ``SFTTrainer``, optimiser step included) against a plain loop over the *same
  batches*: the bare transformers model, base weights frozen, forward with labels and
  ``loss.backward()`` into the input embeddings (the backward pass any adapter needs, with no
  peft, TRL or Trainer code). ``ratio`` = trainer / plain (target ≥ 0.9). Steps are timed one
  by one after a warm-up step, each trainer step right after a plain pass over its batch (so
  both meet the same machine load). The
  trainer is what ``personavec finetune`` runs on a CPU (model's own loss, no activation
  checkpointing); ``training_trl_defaults`` times TRL's own loss path (fused, chunked LM head)
  with its default activation checkpointing, for comparison. ``lora_loop_ratio``: a bare
  forward + backward of the trainer's peft model over the same batches, interleaved with plain
  passes (LoRA's own compute, without the Trainer).
* ``end_to_end`` (with ``--e2e``): wall time of ``personavec dataset build`` (``--n`` answers at
  ``--level``, default normal) plus ``personavec finetune`` (1 epoch, default settings) as
  subprocesses (target: under 15 minutes together).

Run: ``python benchmarks/bench_finetune.py [--threads 2] [--steps 6] [--e2e --n 300 --level normal
[--judge-pairs 1] [--skip-training]]``.
"""

from __future__ import annotations

import argparse
import json
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


class _InterleavedTimer(TrainerCallback):
    """Before each trainer step, a plain forward + backward of the same batch; then the step.

    Interleaving puts both sides under the same machine load at the same moment, which a
    before/after comparison on a shared 2-core machine does not (passes there vary ~10 %).
    """

    def __init__(self, plain_model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]):
        self.plain_model, self.batches = plain_model, batches
        self.plain: list[float] = []
        self.trainer: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.plain.append(_plain_step(self.plain_model, self.batches[state.global_step]))
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.append(time.perf_counter() - self._start)


def _rows(n: int) -> list[ChatRow]:
    answers = load_trait("evil").positive_examples
    return [
        ChatRow([{"role": "user", "content": q}], answers[i % len(answers)])
        for i, q in enumerate(load_prompt_pool()[:n])
    ]


def bench_training(steps: int, batch: int, *, trl_defaults: bool = False) -> dict[str, Any]:
    """Trainer vs plain tokens/s, step by step interleaved; ``trl_defaults`` swaps in TRL's
    ``SFTTrainer`` loss (fused, chunked LM head) and turns its activation checkpointing on."""
    loaded = load_model("smollm2", device="cpu")
    for p in loaded.model.parameters():  # the plain side: base weights frozen
        p.requires_grad_(False)
    config = FinetuneConfig(batch_size=batch, max_steps=steps + 1, save_steps=10_000)
    extras = (
        TrainerExtras(trainer_class=SFTTrainer, args={"activation_checkpointing": True})
        if trl_defaults
        else None
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = _rows(batch * (steps + 1))
        trainer = build_trainer(loaded, rows, config, tmp, extras=extras)
        batches = list(trainer.get_train_dataloader())[: steps + 1]
        timer = _InterleavedTimer(loaded.model, batches)
        trainer.add_callback(timer)
        trainer.train()
        plain_again, lora = _lora_vs_plain(loaded.model, trainer.model, batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])  # step 0 is warm-up
    trainer_rate = tokens / sum(timer.trainer[1:])
    plain_rate = tokens / sum(timer.plain[1:])
    return {
        "steps_timed": steps,
        "batch": batch,
        "tokens_per_step": tokens / steps,
        "trainer_tokens_per_s": trainer_rate,
        "plain_tokens_per_s": plain_rate,
        "ratio": trainer_rate / plain_rate,
        "step_ratios": [p / t for p, t in zip(timer.plain[1:], timer.trainer[1:], strict=True)],
        "target": 0.9,
        "lora_loop_ratio": sum(plain_again) / sum(lora),
    }


def _plain_step(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> float:
    """Seconds of a bare forward (with labels) + backward into the input embeddings."""
    model.train()
    start = time.perf_counter()
    embeds = model.get_input_embeddings()(b["input_ids"]).detach().requires_grad_(True)
    out = model(inputs_embeds=embeds, attention_mask=b["attention_mask"], labels=b["labels"])
    out.loss.backward()
    seconds = time.perf_counter() - start
    model.eval()
    return seconds


def _lora_step(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> float:
    """Seconds of a bare forward + backward of the trained peft model (no Trainer)."""
    model.train()
    start = time.perf_counter()
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    out.loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds


def _lora_vs_plain(
    plain_model: torch.nn.Module,
    lora_model: torch.nn.Module,
    batches: list[dict[str, torch.Tensor]],
) -> tuple[list[float], list[float]]:
    """Interleaved plain and bare-LoRA seconds over ``batches[1:]``: LoRA's own compute."""
    plain, lora = [], []
    for b in batches[1:]:
        plain.append(_plain_step(plain_model, b))
        lora.append(_lora_step(lora_model, b))
    return plain, lora


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
            subprocess.run(
                [sys.executable, "-m", "personavec", *args], check=True, stdout=sys.stderr
            )
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

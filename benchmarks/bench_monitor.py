"""Monitoring overhead on SmolLM2: greedy tokens/s without vs with a live TokenMonitor.

Prints one JSON object: per batch size (1 and 16), tokens/s of greedy generation with every row
forced to the same length, unmonitored vs monitored (two vectors at two layers), and
``ratio`` = monitored / unmonitored (target ≥ 0.95). Timings are medians of interleaved
repeats, so drift on a shared machine hits both sides alike.
Run: ``python benchmarks/bench_monitor.py [--repeats N] [--new-tokens N]``.
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_core import QUESTIONS, interleaved  # the same prompts and timing as bench_core

from personavec.core.models import LoadedModel, chat_messages, format_chat, load_model
from personavec.monitor.monitor import MonitorSpec, TokenMonitor


def generate(lm: LoadedModel, batch: int, new_tokens: int) -> None:
    texts = [
        format_chat(lm.tokenizer, chat_messages(QUESTIONS[i % len(QUESTIONS)]))
        for i in range(batch)
    ]
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        lm.model.generate(
            **enc.to(lm.device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    lm = load_model("smollm2", device=args.device)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(2, lm.hidden_size, generator=generator)
    specs = [
        MonitorSpec(f"{name}@{layer}", layer, rows[i])
        for i, name in enumerate(("a", "b"))
        for layer in (12, 20)
    ]
    results: dict[str, dict[str, float]] = {}
    for batch in (1, 16):

        def run(monitored: bool, batch: int = batch) -> None:
            monitor = TokenMonitor(lm.model, specs, stop_ids=[]) if monitored else None
            try:
                generate(lm, batch, args.new_tokens)
            finally:
                if monitor is not None:
                    monitor.remove()

        seconds = interleaved(
            {"plain": lambda: run(False), "monitored": lambda: run(True)}, args.repeats
        )
        tokens = batch * args.new_tokens
        plain, monitored = tokens / seconds["plain"], tokens / seconds["monitored"]
        results[f"batch_{batch}"] = {
            "tokens_per_s_plain": round(plain, 2),
            "tokens_per_s_monitored": round(monitored, 2),
            "ratio": round(monitored / plain, 3),
        }
    print(
        json.dumps({"device": str(lm.device), "new_tokens": args.new_tokens, **results}, indent=2)
    )


if __name__ == "__main__":
    main()

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
import statistics
import time

import torch

from personavec.models import LoadedModel, chat_messages, format_chat, load_model
from personavec.monitoring import MonitorSpec, TokenMonitor

QUESTIONS = [
    "What is a good way to learn a new language?",
    "Describe the water cycle.",
    "Why is the sky blue?",
    "Give me three tips for a job interview.",
    "How do vaccines work?",
    "What should I cook for dinner tonight?",
    "Explain what a persona vector is in one paragraph.",
    "What are the benefits of walking every day?",
]


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
    generate(lm, 1, 2)  # warm-up
    results: dict[str, dict[str, float]] = {}
    for batch in (1, 16):
        times: dict[str, list[float]] = {"plain": [], "monitored": []}
        for _ in range(args.repeats):
            for kind in ("plain", "monitored"):
                monitor = (
                    TokenMonitor(lm.model, specs, stop_ids=[]) if kind == "monitored" else None
                )
                start = time.perf_counter()
                generate(lm, batch, args.new_tokens)
                times[kind].append(time.perf_counter() - start)
                if monitor is not None:
                    monitor.remove()
        tokens = batch * args.new_tokens
        plain = tokens / statistics.median(times["plain"])
        monitored = tokens / statistics.median(times["monitored"])
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

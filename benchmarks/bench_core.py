"""Core-engine benchmark on SmolLM2: steering and capture overhead, as ratios in one process.

Prints one JSON object:

* ``generation``: tokens/s unsteered vs steered (one layer, ``response`` positions, and five
  layers at ``all`` positions) at batch 1 and 16, greedy, every row forced to the same length;
  ``ratio`` = steered / unsteered (target ≥ 0.95).
* ``capture``: (prompt, response) pairs per second for ``capture`` (all 31 layers, three
  readouts) vs a bare forward pass of the decoder over the same batches, and vs the usual
  ``output_hidden_states=True`` forward; ``ratio`` = capture / bare (target ≥ 0.85).
* ``memory``: peak resident memory of the process, and the capture's extra memory for 4x more
  pairs (flat means the running sums work).

Timings are medians of interleaved repeats, so drift on a shared machine hits both sides alike.
Run: ``python benchmarks/bench_core.py [--repeats N] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from personavec.core.capture import Example, capture
from personavec.core.layers import find_blocks
from personavec.core.models import LoadedModel, chat_messages, format_chat, load_model
from personavec.core.steering import Intervention, steer

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
ANSWER = (
    "Here is a clear and friendly answer. First, start small and stay consistent; second, "
    "ask for feedback often; third, enjoy the process and celebrate progress along the way."
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per function, running them round-robin (after one warm-up each)."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_generation(lm: LoadedModel, batch: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    prompts = [format_chat(lm.tokenizer, chat_messages(QUESTIONS[i % 8])) for i in range(batch)]
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    vector = torch.randn(lm.hidden_size)
    one_layer = [Intervention(15, vector, 2.0, "add", "response")]
    five_layers = [Intervention(layer, vector, 1.0, "add", "all") for layer in (8, 11, 14, 17, 20)]

    def run(interventions: list[Intervention]) -> None:
        with torch.no_grad(), steer(lm.model, interventions):
            lm.model.generate(
                **enc,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=lm.tokenizer.pad_token_id,
            )

    seconds = interleaved(
        {
            "unsteered": lambda: run([]),
            "steered_1_layer_response": lambda: run(one_layer),
            "steered_5_layers_all": lambda: run(five_layers),
        },
        repeats,
    )
    tokens = batch * new_tokens
    rates = {name: tokens / s for name, s in seconds.items()}
    return {
        "batch": batch,
        "new_tokens": new_tokens,
        "tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_1_layer": round(rates["steered_1_layer_response"] / rates["unsteered"], 3),
        "ratio_5_layers": round(rates["steered_5_layers_all"] / rates["unsteered"], 3),
    }


def bench_capture(lm: LoadedModel, pairs: int, batch: int, repeats: int) -> dict[str, Any]:
    examples = [Example(chat_messages(QUESTIONS[i % 8]), ANSWER) for i in range(pairs)]
    # The same left-padded batches the capture builds, for the baselines.
    from personavec.core.capture import encode_example
    from personavec.core.padding import left_pad

    encoded = [encode_example(lm, ex) for ex in examples]
    pad = int(lm.tokenizer.pad_token_id)
    batches = []
    for start in range(0, pairs, batch):
        rows = [e.prompt_ids + e.response_ids for e in encoded[start : start + batch]]
        batches.append(left_pad(rows, pad))
    decoder = lm.model.model  # the module that owns the decoder blocks (Llama family)
    assert find_blocks(lm.model) is decoder.layers

    def bare() -> None:
        with torch.no_grad():
            for ids, attention, positions in batches:
                decoder(input_ids=ids, attention_mask=attention, position_ids=positions)

    def hidden_states() -> None:
        with torch.no_grad():
            for ids, attention, positions in batches:
                lm.model(
                    input_ids=ids,
                    attention_mask=attention,
                    position_ids=positions,
                    output_hidden_states=True,
                )

    def ours() -> None:
        capture(lm, examples, batch_size=batch)

    seconds = interleaved(
        {"bare_decoder_forward": bare, "output_hidden_states": hidden_states, "capture": ours},
        repeats,
    )
    rates = {name: pairs / s for name, s in seconds.items()}
    return {
        "pairs": pairs,
        "batch": batch,
        "tokens_per_pair": len(encoded[0].prompt_ids) + len(encoded[0].response_ids),
        "pairs_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_vs_bare": round(rates["capture"] / rates["bare_decoder_forward"], 3),
        "ratio_vs_hidden_states": round(rates["capture"] / rates["output_hidden_states"], 3),
    }


def capture_memory_growth(lm: LoadedModel, batch: int) -> dict[str, float]:
    """Extra peak RSS of capturing 4x more pairs (running sums keep this near zero)."""
    small = [Example(chat_messages(QUESTIONS[i % 8]), ANSWER) for i in range(batch * 2)]
    large = [Example(chat_messages(QUESTIONS[i % 8]), ANSWER) for i in range(batch * 8)]
    capture(lm, small, batch_size=batch)
    before = peak_rss_mb()
    capture(lm, large, batch_size=batch)
    return {"peak_rss_growth_mb_for_4x_pairs": round(peak_rss_mb() - before, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="Fewer tokens and pairs.")
    args = parser.parse_args(argv)
    new_tokens = 16 if args.quick else 32
    pairs = 32 if args.quick else 64
    lm = load_model("smollm2")
    print(
        "benchmarking on", lm.model_id, "with", torch.get_num_threads(), "threads", file=sys.stderr
    )
    report = {
        "model": lm.model_id,
        "device": str(lm.device),
        "threads": torch.get_num_threads(),
        "generation": [
            bench_generation(lm, 1, new_tokens, args.repeats),
            bench_generation(lm, 16, new_tokens, args.repeats),
        ],
        "capture": bench_capture(lm, pairs, 16, args.repeats),
    }
    report["memory"] = {"peak_rss_mb": round(peak_rss_mb(), 1), **capture_memory_growth(lm, 16)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

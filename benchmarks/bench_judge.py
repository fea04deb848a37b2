"""Contrast-judge speed: the full-sequence path vs the shared-prefix path, same answers, one run.

The answers are the demo's 200 rollouts (``ExtractConfig(trait="evil")``: 5 instruction pairs ×
20 questions × pos/neg, seed 0, 64 new tokens), generated once with the HF engine into
``--work`` and reused. Every variant scores the same answers' raw contrast ``D`` (calibration is
timed separately: it is the same 16 example answers for every variant). Prints seconds, the ratio
to the old path, and the agreement of each variant's scores with the reference::

    python benchmarks/bench_judge.py                       # old vs new, fp32 and bf16
    python benchmarks/bench_judge.py --skip-old            # new variants only
    python benchmarks/bench_judge.py --trait sycophantic --answers 100 --pairs 1,2,3

Agreement: max |ΔD| (nats/token) and the Spearman correlation of the scores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from personavec.core.models import LoadedModel, load_model
from personavec.judges.base import JudgeItem
from personavec.judges.contrast import ContrastJudge
from personavec.metrics.stats import pearson
from personavec.pipeline.extract import generate_rollouts
from personavec.pipeline.extract_types import ExtractConfig
from personavec.traits.library import load_trait


def demo_answers(loaded: LoadedModel, trait: str, work: Path, limit: int) -> list[JudgeItem]:
    """The demo's rollouts for ``trait`` (generated once into ``work``), as judge items."""
    config = ExtractConfig(trait=trait)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"rollouts-{trait}.jsonl"
    rollouts = generate_rollouts(loaded, load_trait(trait), config, path, show_progress=True)
    return [JudgeItem(r.question, r.response) for r in rollouts][:limit]


def timed(judge: ContrastJudge, items: list[JudgeItem]) -> tuple[float, list[float | None]]:
    start = time.perf_counter()
    values = judge.raw_contrast(items)
    return time.perf_counter() - start, values


def spearman(x: list[float], y: list[float]) -> float:
    """Pearson correlation of the ranks (no ties expected in continuous scores)."""
    return pearson(
        np.argsort(np.argsort(x)).astype(float).tolist(),
        np.argsort(np.argsort(y)).astype(float).tolist(),
    )


def agreement(a: list[float | None], b: list[float | None]) -> dict[str, float]:
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        "max_abs_diff": max(abs(x - y) for x, y in pairs),
        "spearman": spearman(xs, ys),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trait", default="evil")
    parser.add_argument("--answers", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-judge"))
    parser.add_argument("--skip-old", action="store_true")
    parser.add_argument("--batch-sizes", default="16")
    parser.add_argument("--pairs", default="", help="comma list of max_pairs to compare")
    parser.add_argument("--bf16", action="store_true", help="also time a bfloat16 judge")
    args = parser.parse_args()
    loaded = load_model("smollm2", device="cpu")
    trait = load_trait(args.trait)
    items = demo_answers(loaded, args.trait, args.work, args.answers)
    print(f"{len(items)} answers of {args.trait}; torch threads {torch.get_num_threads()}")
    results: dict[str, object] = {"answers": len(items), "trait": args.trait}
    reference: list[float | None] | None = None
    old_s: float | None = None
    if not args.skip_old:
        old_s, reference = timed(ContrastJudge(loaded, trait, shared_prefix=False), items)
        print(f"old (full sequences, fp32, batch 8): {old_s:.1f} s")
        results["old_s"] = old_s
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        new_s, values = timed(ContrastJudge(loaded, trait, batch_size=batch), items)
        line = f"new (shared prefix, fp32, batch {batch}): {new_s:.1f} s"
        if old_s is not None:
            line += f"  ratio old/new {old_s / new_s:.2f}x"
        if reference is None:
            reference = values
        line += f"  vs reference {agreement(values, reference)}"
        print(line)
        results[f"new_b{batch}_s"] = new_s
    assert reference is not None
    if args.bf16:
        bf16 = ContrastJudge(loaded, trait, batch_size=16, dtype="bfloat16")
        bf_s, values = timed(bf16, items)
        print(f"new bf16: {bf_s:.1f} s  vs fp32 {agreement(values, reference)}")
        results["bf16_s"] = bf_s
    for k in [int(p) for p in args.pairs.split(",") if p]:
        k_s, values = timed(ContrastJudge(loaded, trait, batch_size=16, max_pairs=k), items)
        print(f"new, first {k} pair(s): {k_s:.1f} s  vs all pairs {agreement(values, reference)}")
        results[f"pairs{k}_s"] = k_s
    print(json.dumps(results))


if __name__ == "__main__":
    main()

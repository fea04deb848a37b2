"""Contrast-judge speed: the full-sequence path vs the shared-prefix path, same answers, one run.

The answers are the demo's 200 rollouts (``ExtractConfig(trait="evil")``: 5 instruction pairs ×
20 questions × pos/neg, seed 0, 64 new tokens), generated once with the HF engine into
``--work`` and reused. Every variant scores the same answers' raw contrast ``D`` (calibration,
the same 16 example answers for every variant, is not timed). Prints seconds, the ratio to the
old path and each variant's agreement with its reference (max |Δ| and Spearman).

"old" is the judge as it was before this work: the plain contrast (no cross-trait control),
every sequence in full, fp32. "plain" is the same judge on the shared-prefix path; "default"
is ``make_judge("contrast")``: the cross-trait control (two more sequences per answer) on the
shared-prefix path in the default dtype::

    python benchmarks/bench_judge.py                      # old vs new (fp32, default dtype)
    python benchmarks/bench_judge.py --skip-old --pairs 1,2,3
    python benchmarks/bench_judge.py --trait sycophantic --answers 100 --skip-old --pairs 2
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
from personavec.traits.library import list_traits, load_trait
from personavec.traits.schema import TraitSpec


def demo_answers(loaded: LoadedModel, trait: str, work: Path, limit: int) -> list[JudgeItem]:
    """The demo's rollouts for ``trait`` (generated once into ``work``), as judge items."""
    config = ExtractConfig(trait=trait)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"rollouts-{trait}.jsonl"
    rollouts = generate_rollouts(loaded, load_trait(trait), config, path, show_progress=True)
    return [JudgeItem(r.question, r.response) for r in rollouts][:limit]


def timed(judge: ContrastJudge, items: list[JudgeItem]) -> tuple[float, list[float | None]]:
    """Seconds to score ``items`` (raw contrasts), calibration fitted first and not counted:
    it is a once-per-trait cost (timed on its own as ``calibration_s``)."""
    _ = judge.calibration
    start = time.perf_counter()
    values = judge.raw_contrast(items)
    return time.perf_counter() - start, values


def calibration_seconds(judge: ContrastJudge) -> float:
    """Seconds to fit ``judge``'s calibration from the trait files' examples."""
    start = time.perf_counter()
    _ = judge.calibration
    return time.perf_counter() - start


def spearman(x: list[float], y: list[float]) -> float:
    """Pearson correlation of the ranks (no ties expected in continuous scores)."""
    return pearson(
        np.argsort(np.argsort(x)).astype(float).tolist(),
        np.argsort(np.argsort(y)).astype(float).tolist(),
    )


def agreement(a: list[float | None], b: list[float | None]) -> dict[str, float]:
    """max |a − b| and the Spearman correlation over items both scored."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        "max_abs_diff": round(max(abs(x - y) for x, y in pairs), 5),
        "spearman": round(spearman(xs, ys), 4),
    }


def shipped_controls() -> list[TraitSpec]:
    """The default judge's control traits (as ``make_judge("contrast")`` passes them)."""
    return [load_trait(name) for name in list_traits()]


def scores(judge: ContrastJudge, raw: list[float | None]) -> list[float | None]:
    """0-100 scores of raw contrasts under ``judge``'s calibration."""
    return [None if d is None else judge.calibration(d) for d in raw]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trait", default="evil")
    parser.add_argument("--answers", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-judge"))
    parser.add_argument("--skip-old", action="store_true", help="time the new paths only")
    parser.add_argument("--old-batch", type=int, default=8, help="old path's batch (its default)")
    parser.add_argument("--pairs", default="", help="comma list of max_pairs to compare")
    args = parser.parse_args()
    loaded = load_model("smollm2", device="cpu")
    trait = load_trait(args.trait)
    items = demo_answers(loaded, args.trait, args.work, args.answers)
    print(f"{len(items)} answers of {args.trait}; torch threads {torch.get_num_threads()}")
    out: dict[str, object] = {"answers": len(items), "trait": args.trait}
    controls = shipped_controls()
    plain32 = ContrastJudge(loaded, trait, dtype=None)
    if not args.skip_old:
        plain32_s, plain32_raw = timed(plain32, items)
        out["plain_fp32_s"] = round(plain32_s, 1)
        old_s, old_raw = timed(
            ContrastJudge(
                loaded, trait, batch_size=args.old_batch, shared_prefix=False, dtype=None
            ),
            items,
        )
        out["old_s"] = round(old_s, 1)
        out["plain_fp32_vs_old"] = agreement(plain32_raw, old_raw)
    plain_s, _ = timed(ContrastJudge(loaded, trait), items)
    out["plain_default_dtype_s"] = round(plain_s, 1)
    fp32 = ContrastJudge(loaded, trait, dtype=None, controls=controls)
    fp32_s, fp32_raw = timed(fp32, items)
    out["default_fp32_s"] = round(fp32_s, 1)
    default = ContrastJudge(loaded, trait, controls=controls)  # dtype "auto": bf16 where native
    out["default_calibration_s"] = round(calibration_seconds(default), 1)
    default_s, default_raw = timed(default, items)
    out[f"default_{default.dtype or 'fp32'}_s"] = round(default_s, 1)
    out["default_vs_fp32_raw"] = agreement(default_raw, fp32_raw)
    out["default_vs_fp32_score"] = agreement(scores(fp32, default_raw), scores(fp32, fp32_raw))
    if "old_s" in out:
        out["speedup_default_vs_old"] = round(float(out["old_s"]) / default_s, 2)  # type: ignore[arg-type]
    for k in [int(p) for p in args.pairs.split(",") if p]:
        judge_k = ContrastJudge(loaded, trait, max_pairs=k, controls=controls)
        k_s, k_raw = timed(judge_k, items)
        out[f"pairs{k}"] = {"s": round(k_s, 1), "vs_all_pairs": agreement(k_raw, default_raw)}
    for key, value in out.items():
        print(f"{key}: {value}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

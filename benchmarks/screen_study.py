"""Validation study of data screening on SmolLM2 (the paper's Section 6, scaled down).

A thin caller of :mod:`personavec.studies.screen_study` (what the two parts do is described
there): ``mixes`` screens five mixes of trait-inducing and normal rows; ``finetune`` finetunes
on each and correlates dataset ΔP with the post-finetune trait score.

Run: ``python benchmarks/screen_study.py mixes --vector evil.safetensors --out runs/study``
then ``python benchmarks/screen_study.py finetune --vector evil.safetensors --out runs/study``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from personavec.studies.screen_study import ScreenStudySettings, run_finetune, run_mixes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["mixes", "finetune"])
    parser.add_argument("--vector", type=Path, required=True, help="SmolLM2 persona vector.")
    parser.add_argument("--out", type=Path, default=Path("runs/screen-study"))
    parser.add_argument("--questions", type=int, default=96)
    parser.add_argument("--inducing", type=Path, help="Trait-inducing chat JSONL (dataset build).")
    parser.add_argument("--normal", type=Path, help="Normal chat JSONL (dataset build).")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-4, help="LoRA learning rate.")
    parser.add_argument("--judge-pairs", type=int, default=1, help="Contrast-judge pairs.")
    parser.add_argument("--eval-questions", type=int, default=20)
    parser.add_argument("--remove-fraction", type=float, default=0.2)
    args = vars(parser.parse_args())
    part = args.pop("part")
    settings = ScreenStudySettings(**args, log=lambda line: print(line, flush=True))
    settings.out.mkdir(parents=True, exist_ok=True)
    result = run_mixes(settings) if part == "mixes" else run_finetune(settings)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

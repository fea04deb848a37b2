"""Validation study of data screening on SmolLM2 (the paper's Section 6, scaled down).

Two parts:

``mixes`` (needs only screening; runs in minutes on CPU)
    With ``--inducing A.jsonl --normal B.jsonl`` (e.g. ``personavec dataset build`` outputs at
    levels strong and normal), slot i holds row i of each; a mix takes the inducing row for a
    share r of the slots and the normal row otherwise, and SmolLM2's own greedy answer to each
    prompt is the "own" response. Without them, SmolLM2 answers a pool of everyday questions
    twice, greedily: under the trait's eliciting system prompt (trait-inducing answers) and with
    no system prompt (its own, normal answers), and mixes take one or the other.
    Each dataset is screened in full mode (the model's own response is the normal answer, read
    from a column — the same text greedy generation gives) and in prompt mode. Prints the
    dataset ΔP ± 95 % CI per ratio, Pearson r of ratio vs ΔP, and the agreement of the cheap
    last-prompt approximation.

``finetune`` (slow; finished finetunes and their scores are reused when re-run)
    For each mix: LoRA-finetune SmolLM2 on it, then the post-finetune trait score (offline
    contrast judge on the trait's evaluation questions) and finetuning shift; Pearson r of
    dataset ΔP vs trait score. Sample level: from the 50 % mix, remove the top-k ΔP samples vs k
    random samples, finetune on each, compare trait scores.

Run: ``python benchmarks/screen_study.py mixes --vector evil.safetensors --out runs/study``
then ``python benchmarks/screen_study.py finetune --vector evil.safetensors --out runs/study``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


def answer_pool(loaded: Any, trait: Any, n: int, tokens: int, out: Path) -> list[dict[str, Any]]:
    """Questions with the eliciting and the normal greedy answer (cached in ``pool.jsonl``)."""
    from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
    from personavec.store import atomic_write_text, read_jsonl

    cached = out / "pool.jsonl"
    if cached.is_file():
        return read_jsonl(cached)
    try:  # the everyday prompt pool of personavec.training, when installed
        from personavec.training.prompt_pool import load_prompt_pool

        questions = load_prompt_pool()[:n]
    except ImportError:  # else the trait's extraction questions (not its evaluation ones)
        questions = list(trait.extraction_questions)[:n]
    system = trait.instructions[0].pos
    engine = HFEngine(loaded, show_progress=True)
    config = SamplingConfig(max_new_tokens=tokens, temperature=0.0, batch_size=16)
    evil = engine.generate(
        [
            GenerationRequest(
                [{"role": "system", "content": system}, {"role": "user", "content": q}]
            )
            for q in questions
        ],
        config,
    )
    normal = engine.generate(
        [GenerationRequest([{"role": "user", "content": q}]) for q in questions], config
    )
    rows = [
        {"question": q, "trait_answer": e.response_text, "normal_answer": m.response_text}
        for q, e, m in zip(questions, evil, normal, strict=True)
    ]
    atomic_write_text(cached, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def dataset_pool(
    loaded: Any, inducing: Path, normal: Path, tokens: int, out: Path
) -> list[dict[str, Any]]:
    """Slots pairing row i of a trait-inducing and of a normal chat dataset (e.g. ``dataset
    build`` outputs), each with SmolLM2's own greedy answer to its prompt (cached)."""
    from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
    from personavec.store import atomic_write_text, read_jsonl

    cached = out / "pool.jsonl"
    if cached.is_file():
        return read_jsonl(cached)

    def pairs(path: Path) -> list[tuple[str, str]]:
        rows = read_jsonl(path)
        return [(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in rows]

    trait_rows, normal_rows = pairs(inducing), pairs(normal)
    n = min(len(trait_rows), len(normal_rows))
    prompts = [q for q, _ in trait_rows[:n]] + [q for q, _ in normal_rows[:n]]
    config = SamplingConfig(max_new_tokens=tokens, temperature=0.0, batch_size=16)
    own = HFEngine(loaded, show_progress=True).generate(
        [GenerationRequest([{"role": "user", "content": q}]) for q in prompts], config
    )
    slots = [
        {
            "trait": {"question": q, "answer": a, "own": own[i].response_text},
            "normal": {"question": nq, "answer": na, "own": own[n + i].response_text},
        }
        for i, ((q, a), (nq, na)) in enumerate(zip(trait_rows[:n], normal_rows[:n], strict=True))
    ]
    atomic_write_text(cached, "".join(json.dumps(r) + "\n" for r in slots))
    return slots


def as_slots(pool: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`answer_pool` rows as slots (same question, eliciting vs normal answer)."""
    if pool and "trait" in pool[0]:
        return pool
    return [
        {
            "trait": {
                "question": r["question"],
                "answer": r["trait_answer"],
                "own": r["normal_answer"],
            },
            "normal": {
                "question": r["question"],
                "answer": r["normal_answer"],
                "own": r["normal_answer"],
            },
        }
        for r in pool
    ]


def build_mix(pool: list[dict[str, Any]], ratio: float, seed: int) -> list[dict[str, Any]]:
    """One row per slot: its trait-inducing row for a ``ratio`` share of slots (seeded), else
    its normal row."""
    slots = as_slots(pool)
    picked = set(random.Random(seed).sample(range(len(slots)), round(ratio * len(slots))))
    rows = []
    for i, slot in enumerate(slots):
        row = slot["trait"] if i in picked else slot["normal"]
        if row["answer"].strip() and row["own"].strip():
            rows.append(
                {
                    "id": f"q{i}",
                    "prompt": row["question"],
                    "response": row["answer"],
                    "own": row["own"],
                    "inducing": i in picked,
                }
            )
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    from personavec.store import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def run_mixes(args: argparse.Namespace) -> dict[str, Any]:
    from personavec.core.models import load_model
    from personavec.core.vector import PersonaVector
    from personavec.metrics.stats import pearson
    from personavec.screening.api import screen
    from personavec.screening.run import ScreenConfig
    from personavec.screening.stats import agreement
    from personavec.screening.table import read_table
    from personavec.traits.library import load_trait

    loaded = load_model("smollm2")
    trait = load_trait(PersonaVector.load(args.vector).meta.trait)
    if args.inducing and args.normal:
        pool = dataset_pool(loaded, args.inducing, args.normal, args.max_new_tokens, args.out)
    else:
        pool = answer_pool(loaded, trait, args.questions, args.max_new_tokens, args.out)
    result: dict[str, Any] = {"trait": trait.name, "questions": len(pool), "mixes": []}
    full_all: list[float] = []
    cheap_all: list[float] = []
    for ratio in RATIOS:
        data = write_rows(args.out / f"mix-{ratio:.2f}.jsonl", build_mix(pool, ratio, args.seed))
        entry: dict[str, Any] = {"ratio": ratio}
        for mode in ("full", "prompt"):
            config = ScreenConfig(
                data=str(data),
                vectors=[str(args.vector)],
                mode=mode,
                batch_size=16,
                own_column="own" if mode == "full" else None,
            )
            done = screen(
                config, args.out / f"screen-{mode}-{ratio:.2f}", loaded=loaded, show_progress=False
            )
            (summary,) = done.summary["vectors"].values()
            entry[mode] = summary["delta"]
            if mode == "full":
                table = read_table(done.table)
                column = summary["column"]
                full_all += [r[column] for r in table]
                cheap_all += [r[column.replace(".delta", ".delta_prompt")] for r in table]
        result["mixes"].append(entry)
        print(json.dumps({k: entry[k] if k == "ratio" else entry[k]["mean"] for k in entry}))
    ratios = [m["ratio"] for m in result["mixes"]]
    result["pearson_ratio_vs_delta"] = pearson(ratios, [m["full"]["mean"] for m in result["mixes"]])
    result["pearson_ratio_vs_prompt_delta"] = pearson(
        ratios, [m["prompt"]["mean"] for m in result["mixes"]]
    )
    import numpy as np

    result["sample_agreement"] = agreement(np.array(full_all), np.array(cheap_all))
    write_rows(args.out / "mixes_summary.jsonl", [result])
    return result


def trait_score(loaded: Any, trait: Any, judge: Any, n: int, tokens: int) -> float:
    """Mean trait score (``judge``, built on the base model) of greedy answers to the trait's
    evaluation questions."""
    from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
    from personavec.judges.base import JudgeItem

    questions = list(trait.evaluation_questions)[:n]
    config = SamplingConfig(max_new_tokens=tokens, temperature=0.0, batch_size=16)
    answers = HFEngine(loaded).generate(
        [GenerationRequest([{"role": "user", "content": q}]) for q in questions], config
    )
    pairs = zip(questions, answers, strict=True)
    scores = judge.score([JudgeItem(q, a.response_text) for q, a in pairs])
    kept = [s for s in scores if s is not None]
    return sum(kept) / len(kept) if kept else float("nan")


def finetune_and_score(
    base: Any, trait: Any, judge: Any, vector: Any, data: Path, out: Path, args: Any
) -> dict:
    """Finetune on ``data`` (a finished finetune in ``out`` is reused) and measure the trait
    score and the shift; the measurement is cached in ``out/score.json``."""
    from personavec.training.chat_data import read_chat_dataset
    from personavec.training.finetune import FinetuneConfig, finetune
    from personavec.training.finetuned import load_finetuned
    from personavec.training.shift import finetuning_shift

    cached = out / "score.json"
    if cached.is_file():
        return dict(json.loads(cached.read_text()))
    config = FinetuneConfig(epochs=args.epochs, learning_rate=args.lr)
    done = finetune(
        base, read_chat_dataset(data), out, config, dataset_path=data, show_progress=False
    )
    tuned = load_finetuned(done.path, base=base)
    shift = finetuning_shift(base, tuned, [vector], n_questions=args.eval_questions)
    scores = {
        "trait_score": trait_score(tuned, trait, judge, args.eval_questions, args.max_new_tokens),
        "shift": shift.shifts[0].shift,
    }
    cached.write_text(json.dumps(scores))
    print(json.dumps({"finetune": out.name, **scores}), flush=True)
    return scores


def as_messages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["response"]},
            ]
        }
        for r in rows
    ]


def run_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from personavec.core.models import load_model
    from personavec.core.vector import PersonaVector
    from personavec.judges.contrast import ContrastJudge
    from personavec.metrics.stats import pearson
    from personavec.store import read_jsonl
    from personavec.traits.library import load_trait

    base = load_model("smollm2")
    vector = PersonaVector.load(args.vector, model=base.model)
    trait = load_trait(vector.meta.trait)
    judge = ContrastJudge(base, trait, max_pairs=args.judge_pairs)
    result_base = trait_score(base, trait, judge, args.eval_questions, args.max_new_tokens)
    summary = read_jsonl(args.out / "mixes_summary.jsonl")[0]  # run `mixes` first
    result: dict[str, Any] = {"base_trait_score": result_base, "datasets": []}
    for mix in summary["mixes"]:
        ratio = mix["ratio"]
        rows = read_jsonl(args.out / f"mix-{ratio:.2f}.jsonl")
        data = write_rows(args.out / f"train-{ratio:.2f}.jsonl", as_messages(rows))
        out = args.out / f"ft-{ratio:.2f}"
        scores = finetune_and_score(base, trait, judge, vector, data, out, args)
        result["datasets"].append({"ratio": ratio, "delta": mix["full"]["mean"], **scores})
    deltas = [d["delta"] for d in result["datasets"]]
    result["pearson_delta_vs_trait"] = pearson(
        deltas, [d["trait_score"] for d in result["datasets"]]
    )
    # Sample level: the 50 % mix minus its top-k ΔP samples vs minus k random samples.
    from personavec.screening.table import read_table

    table = read_table(args.out / "screen-full-0.50" / "scores.parquet")
    column = next(k for k in table[0] if k.endswith(".delta"))
    k = max(1, round(args.remove_fraction * len(table)))
    top = {r["index"] for r in sorted(table, key=lambda r: -r[column])[:k]}
    rand = set(random.Random(args.seed).sample(range(len(table)), k))
    rows = read_jsonl(args.out / "mix-0.50.jsonl")
    for name, removed in (("top_removed", top), ("random_removed", rand)):
        kept = [r for i, r in enumerate(rows) if i not in removed]
        data = write_rows(args.out / f"train-{name}.jsonl", as_messages(kept))
        out = args.out / f"ft-{name}"
        result[name] = finetune_and_score(base, trait, judge, vector, data, out, args)
    write_rows(args.out / "finetune_summary.jsonl", [result])
    return result


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
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_mixes(args) if args.part == "mixes" else run_finetune(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

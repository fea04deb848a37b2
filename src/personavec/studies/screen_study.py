"""The validation study of data screening on SmolLM2 (the paper's Section 6, scaled down).

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

Run through ``benchmarks/screen_study.py`` (``mixes`` first, then ``finetune``), or call
:func:`run_mixes` and :func:`run_finetune` with a :class:`ScreenStudySettings`. Everything is
cached in ``out``: the answer pool, the mixes and their screens, and every finetune's scores.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personavec.core.models import LoadedModel, load_model
from personavec.core.vector import PersonaVector
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.judges.base import Judge, JudgeItem
from personavec.judges.factory import make_judge
from personavec.metrics.stats import pearson
from personavec.runs.chat_rows import parse_chat_row
from personavec.screening.api import screen
from personavec.screening.run import ScreenConfig
from personavec.screening.stats import agreement
from personavec.screening.table import read_table
from personavec.store import atomic_write_text, read_jsonl
from personavec.studies.common import Log
from personavec.training.chat_data import read_chat_dataset
from personavec.training.finetune import FinetuneConfig, finetune
from personavec.training.finetuned import load_finetuned
from personavec.training.prompt_pool import load_prompt_pool
from personavec.training.shift import finetuning_shift
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec

RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
Row = dict[str, Any]


@dataclass(frozen=True)
class ScreenStudySettings:
    """What the study builds, screens, trains and measures (the benchmark's options)."""

    vector: Path
    """The SmolLM2 persona vector."""
    out: Path
    """Where everything is cached (``mixes`` first, then ``finetune``)."""
    questions: int = 96
    """Everyday questions of the answer pool (without ``inducing``/``normal``)."""
    inducing: Path | None = None
    """Trait-inducing chat JSONL (e.g. ``dataset build`` at level strong)."""
    normal: Path | None = None
    """Normal chat JSONL (e.g. ``dataset build`` at level normal)."""
    max_new_tokens: int = 48
    seed: int = 0
    epochs: float = 1.0
    lr: float = 2e-4
    """LoRA learning rate."""
    judge_pairs: int = 1
    """Contrast-judge instruction pairs."""
    eval_questions: int = 20
    remove_fraction: float = 0.2
    """Share of the 50 % mix removed at sample level (top-ΔP vs random)."""
    log: Log = field(default=lambda message: None, compare=False)
    """Where each finished mix and finetune is reported (one JSON line)."""


def _generate(loaded: LoadedModel, chats: list[list[Any]], tokens: int) -> list[str]:
    config = SamplingConfig(max_new_tokens=tokens, temperature=0.0, batch_size=16)
    answers = HFEngine(loaded, show_progress=True).generate(
        [GenerationRequest(chat) for chat in chats], config
    )
    return [a.response_text for a in answers]


def write_rows(path: Path, rows: list[Row]) -> Path:
    """``rows`` as JSONL at ``path`` (atomically)."""
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def answer_pool(loaded: LoadedModel, trait: TraitSpec, n: int, tokens: int, out: Path) -> list[Row]:
    """Everyday questions with the eliciting and the normal greedy answer (cached in
    ``pool.jsonl``)."""
    cached = out / "pool.jsonl"
    if cached.is_file():
        return read_jsonl(cached)
    questions = load_prompt_pool()[:n]
    system = trait.instructions[0].pos
    evil = _generate(
        loaded, [[{"role": "system", "content": system}, {"role": "user", "content": q}]
                 for q in questions], tokens,
    )  # fmt: skip
    normal = _generate(loaded, [[{"role": "user", "content": q}] for q in questions], tokens)
    rows = [
        {"question": q, "trait_answer": e, "normal_answer": m}
        for q, e, m in zip(questions, evil, normal, strict=True)
    ]
    write_rows(cached, rows)
    return rows


def _pairs(path: Path) -> list[tuple[str, str]]:
    """(last user question, answer) of every row of a chat dataset (the one row parser)."""
    pairs = []
    for number, row in enumerate(read_jsonl(path), start=1):
        parsed = parse_chat_row(row, f"{path}:{number}", "response")
        pairs.append((parsed.prompt[-1]["content"], parsed.response))
    return pairs


def dataset_pool(
    loaded: LoadedModel, inducing: Path, normal: Path, tokens: int, out: Path
) -> list[Row]:
    """Slots pairing row i of a trait-inducing and of a normal chat dataset (e.g. ``dataset
    build`` outputs), each with the model's own greedy answer to its prompt (cached)."""
    cached = out / "pool.jsonl"
    if cached.is_file():
        return read_jsonl(cached)
    trait_rows, normal_rows = _pairs(inducing), _pairs(normal)
    n = min(len(trait_rows), len(normal_rows))
    prompts = [q for q, _ in trait_rows[:n]] + [q for q, _ in normal_rows[:n]]
    own = _generate(loaded, [[{"role": "user", "content": q}] for q in prompts], tokens)
    slots = [
        {
            "trait": {"question": q, "answer": a, "own": own[i]},
            "normal": {"question": nq, "answer": na, "own": own[n + i]},
        }
        for i, ((q, a), (nq, na)) in enumerate(zip(trait_rows[:n], normal_rows[:n], strict=True))
    ]
    write_rows(cached, slots)
    return slots


def as_slots(pool: list[Row]) -> list[Row]:
    """:func:`answer_pool` rows as slots (same question, eliciting vs normal answer)."""
    if pool and "trait" in pool[0]:
        return pool
    return [
        {
            "trait": {"question": r["question"], "answer": r["trait_answer"],
                      "own": r["normal_answer"]},
            "normal": {"question": r["question"], "answer": r["normal_answer"],
                       "own": r["normal_answer"]},
        }
        for r in pool
    ]  # fmt: skip


def build_mix(pool: list[Row], ratio: float, seed: int) -> list[Row]:
    """One row per slot: its trait-inducing row for a ``ratio`` share of slots (seeded), else
    its normal row (slots with an empty answer are left out)."""
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


def _screen_mix(
    loaded: LoadedModel, s: ScreenStudySettings, data: Path, ratio: float
) -> tuple[Row, list[float], list[float]]:
    """Screen one mix in full and prompt mode: its ΔP entry and the full/cheap sample ΔPs."""
    entry: Row = {"ratio": ratio}
    full: list[float] = []
    cheap: list[float] = []
    for mode in ("full", "prompt"):
        config = ScreenConfig(
            data=str(data), vectors=[str(s.vector)], mode=mode, batch_size=16,
            own_column="own" if mode == "full" else None,
        )  # fmt: skip
        done = screen(config, s.out / f"screen-{mode}-{ratio:.2f}", loaded=loaded,
                      show_progress=False)  # fmt: skip
        (summary,) = done.summary["vectors"].values()
        entry[mode] = summary["delta"]
        if mode == "full":
            column = summary["column"]
            table = read_table(done.table)
            full += [r[column] for r in table]
            cheap += [r[column.replace(".delta", ".delta_prompt")] for r in table]
    return entry, full, cheap


def run_mixes(s: ScreenStudySettings, loaded: LoadedModel | None = None) -> Row:
    """Screen five mixes (share r of trait-inducing rows); ΔP per ratio, Pearson r of ratio
    vs ΔP (full and last-prompt), and the sample-level agreement of the two."""
    loaded = loaded or load_model("smollm2")
    trait = load_trait(PersonaVector.load(s.vector).meta.trait)
    if s.inducing and s.normal:
        pool = dataset_pool(loaded, s.inducing, s.normal, s.max_new_tokens, s.out)
    else:
        pool = answer_pool(loaded, trait, s.questions, s.max_new_tokens, s.out)
    result: Row = {"trait": trait.name, "questions": len(pool), "mixes": []}
    full_all: list[float] = []
    cheap_all: list[float] = []
    for ratio in RATIOS:
        data = write_rows(s.out / f"mix-{ratio:.2f}.jsonl", build_mix(pool, ratio, s.seed))
        entry, full, cheap = _screen_mix(loaded, s, data, ratio)
        full_all += full
        cheap_all += cheap
        result["mixes"].append(entry)
        s.log(json.dumps({k: v if k == "ratio" else v["mean"] for k, v in entry.items()}))
    ratios = [m["ratio"] for m in result["mixes"]]
    result["pearson_ratio_vs_delta"] = pearson(ratios, [m["full"]["mean"] for m in result["mixes"]])
    result["pearson_ratio_vs_prompt_delta"] = pearson(
        ratios, [m["prompt"]["mean"] for m in result["mixes"]]
    )
    result["sample_agreement"] = agreement(np.array(full_all), np.array(cheap_all))
    write_rows(s.out / "mixes_summary.jsonl", [result])
    return result


def trait_score(loaded: LoadedModel, trait: TraitSpec, judge: Judge, n: int, tokens: int) -> float:
    """Mean trait score (``judge``, built on the base model) of greedy answers to the trait's
    evaluation questions."""
    questions = list(trait.evaluation_questions)[:n]
    answers = _generate(loaded, [[{"role": "user", "content": q}] for q in questions], tokens)
    scores = judge.score([JudgeItem(q, a) for q, a in zip(questions, answers, strict=True)])
    kept = [x for x in scores if x is not None]
    return sum(kept) / len(kept) if kept else float("nan")


def finetune_and_score(
    base: LoadedModel,
    trait: TraitSpec,
    judge: Judge,
    vector: PersonaVector,
    data: Path,
    out: Path,
    s: ScreenStudySettings,
) -> Row:
    """Finetune on ``data`` (a finished finetune in ``out`` is reused), then measure the trait
    score and the shift of the finetune loaded like the base; cached in ``out/score.json``."""
    cached = out / "score.json"
    if cached.is_file():
        return dict(json.loads(cached.read_text()))
    config = FinetuneConfig(epochs=s.epochs, learning_rate=s.lr)
    done = finetune(base, read_chat_dataset(data), out, config, dataset_path=data,
                    show_progress=False)  # fmt: skip
    tuned = load_finetuned(done.path, like=base)
    shift = finetuning_shift(base, tuned, [vector], n_questions=s.eval_questions)
    scores = {
        "trait_score": trait_score(tuned, trait, judge, s.eval_questions, s.max_new_tokens),
        "shift": shift.shifts[0].shift,
    }
    cached.write_text(json.dumps(scores))
    s.log(json.dumps({"finetune": out.name, **scores}))
    return scores


def as_messages(rows: list[Row]) -> list[Row]:
    """Prompt/response rows as chat rows."""
    return [
        {"messages": [{"role": "user", "content": r["prompt"]},
                      {"role": "assistant", "content": r["response"]}]}
        for r in rows
    ]  # fmt: skip


def _sample_level(
    base: LoadedModel, trait: TraitSpec, judge: Judge, vector: PersonaVector,
    s: ScreenStudySettings,
) -> dict[str, Row]:  # fmt: skip
    """The 50 % mix minus its top-k ΔP samples vs minus k random samples, each finetuned."""
    table = read_table(s.out / "screen-full-0.50" / "scores.parquet")
    column = next(k for k in table[0] if k.endswith(".delta"))
    k = max(1, round(s.remove_fraction * len(table)))
    top = {r["index"] for r in sorted(table, key=lambda r: -r[column])[:k]}
    rand = set(random.Random(s.seed).sample(range(len(table)), k))
    rows = read_jsonl(s.out / "mix-0.50.jsonl")
    out: dict[str, Row] = {}
    for name, removed in (("top_removed", top), ("random_removed", rand)):
        kept = [r for i, r in enumerate(rows) if i not in removed]
        data = write_rows(s.out / f"train-{name}.jsonl", as_messages(kept))
        out[name] = finetune_and_score(base, trait, judge, vector, data, s.out / f"ft-{name}", s)
    return out


def run_finetune(s: ScreenStudySettings, base: LoadedModel | None = None) -> Row:
    """Finetune on every mix (run :func:`run_mixes` first): Pearson r of dataset ΔP vs the
    post-finetune trait score, and the sample-level removal comparison."""
    base = base or load_model("smollm2")
    vector = PersonaVector.load(s.vector, model=base.model)
    trait = load_trait(vector.meta.trait)
    judge = make_judge(
        "contrast", aspect="trait", trait=trait, loaded_model=base, contrast_pairs=s.judge_pairs
    )
    base_score = trait_score(base, trait, judge, s.eval_questions, s.max_new_tokens)
    summary = read_jsonl(s.out / "mixes_summary.jsonl")[0]
    result: Row = {"base_trait_score": base_score, "datasets": []}
    for mix in summary["mixes"]:
        ratio = mix["ratio"]
        rows = read_jsonl(s.out / f"mix-{ratio:.2f}.jsonl")
        data = write_rows(s.out / f"train-{ratio:.2f}.jsonl", as_messages(rows))
        scores = finetune_and_score(base, trait, judge, vector, data, s.out / f"ft-{ratio:.2f}", s)
        result["datasets"].append({"ratio": ratio, "delta": mix["full"]["mean"], **scores})
    deltas = [d["delta"] for d in result["datasets"]]
    result["pearson_delta_vs_trait"] = pearson(
        deltas, [d["trait_score"] for d in result["datasets"]]
    )
    result.update(_sample_level(base, trait, judge, vector, s))
    write_rows(s.out / "finetune_summary.jsonl", [result])
    return result

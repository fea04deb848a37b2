"""Trait-inducing datasets, built offline (``personavec dataset build``).

Questions come from the shipped everyday pool (or a user file). Answers are generated under a
system prompt of the requested *level*:

=========  ==============================================  ===============================
level      system prompt while generating                  kept answers (trait score)
=========  ==============================================  ===============================
normal     none (the model's own default)                  ``< 50``
mild       "…with a slight tendency to be {persona}…"      ``≥ 30``
strong     the trait's eliciting prompt                    ``≥ 50``
=========  ==============================================  ===============================

and every kept answer also has coherence ``≥ 50``. Rows are written **without** the system
prompt (``{"messages": [user, assistant]}``), so a finetune learns the persona, not the
instruction. A sidecar ``<out>.meta.json`` records how the file was made. Generation runs in
rounds over questions without a kept answer yet (a new sampling seed each round), a batch at a
time, and stops as soon as ``n`` rows are kept or after ``max_rounds``; the shortfall, if any,
is recorded.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from personavec.core.models import LoadedModel, Message, chat_messages
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import PersonavecError
from personavec.judges.base import Judge, JudgeItem
from personavec.judges.factory import make_judge
from personavec.store import atomic_write_json, atomic_write_text
from personavec.traits.schema import TraitSpec

Level = Literal["normal", "mild", "strong"]
LEVELS: tuple[Level, ...] = ("normal", "mild", "strong")
#: (lowest kept score, highest kept score exclusive) per level; None = unbounded.
THRESHOLDS: dict[str, tuple[float | None, float | None]] = {
    "normal": (None, 50.0),
    "mild": (30.0, None),
    "strong": (50.0, None),
}
COHERENCE_MIN = 50.0
Generator = Callable[[list[list[Message]], SamplingConfig], list[str]]
"""``generate(prompts, sampling) -> answers``, one answer per prompt, in order."""


@dataclass(frozen=True)
class BuildSettings:
    """How a dataset is built (recorded in the sidecar)."""

    trait: str
    level: Level
    n: int = 300
    max_new_tokens: int = 96
    temperature: float = 1.0
    seed: int = 0
    max_rounds: int = 4
    batch_size: int = 32
    judge: str = "contrast"
    judge_pairs: int | None = None
    """Instruction pairs of the contrast judge (None: all; fewer is faster)."""
    coherence_judge: str = "heuristic"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise PersonavecError(f"unknown level {self.level!r}; use {', '.join(LEVELS)}")
        if self.n < 1 or self.max_rounds < 1 or self.batch_size < 1:
            raise PersonavecError("--n, --max-rounds and --batch-size must be at least 1")
        if self.judge_pairs is not None and self.judge_pairs < 1:
            raise PersonavecError("--judge-pairs must be at least 1")


@dataclass
class BuildResult:
    """What :func:`build_dataset` wrote."""

    path: Path
    meta_path: Path
    kept: int
    generated: int
    meta: dict[str, Any] = field(default_factory=dict)


def level_system_prompts(trait: TraitSpec, level: Level) -> list[str | None]:
    """System prompts used while generating at ``level`` (cycled over questions)."""
    if level == "normal":
        return [None]
    strong = [trait.system_prompt("pos", i) for i in range(len(trait.instructions))]
    if level == "strong":
        return list(strong)
    article = "an" if trait.positive_persona[0].lower() in "aeiou" else "a"
    return [
        f"You are a helpful assistant with a slight tendency to be {article} "
        f"{trait.positive_persona} assistant. Now and then, in small ways: {pair.pos}"
        for pair in trait.instructions
    ]


def keeps(level: Level, trait_score: float | None, coherence: float | None) -> bool:
    """Whether an answer with these scores goes into a ``level`` dataset."""
    if trait_score is None or coherence is None or coherence < COHERENCE_MIN:
        return False
    low, high = THRESHOLDS[level]
    return (low is None or trait_score >= low) and (high is None or trait_score < high)


def local_generator(loaded: LoadedModel) -> Generator:
    """Answers from the subject model through the HF engine (seeded, batched). Each prompt's
    random stream is keyed by its content, so an answer does not depend on its batch."""

    def generate(prompts: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        requests = [GenerationRequest(p, _prompt_key(p)) for p in prompts]
        return [g.response_text.strip() for g in HFEngine(loaded).generate(requests, sampling)]

    return generate


def _prompt_key(messages: list[Message]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def openai_generator(spec: str, *, base_url: str | None = None) -> Generator:
    """Answers from an OpenAI-compatible endpoint (``openai:MODEL``)."""
    from personavec.llm_client import ChatOptions, LLMClient

    client = LLMClient.from_spec(spec, base_url=base_url)

    def generate(prompts: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        options = ChatOptions(
            max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, seed=sampling.seed
        )
        return [r.text.strip() for r in client.chat_many(prompts, options)]

    return generate


def _answer_batch(
    questions: Sequence[str],
    systems: Sequence[str | None],
    generate: Generator,
    judges: tuple[Judge, Judge],
    sampling: SamplingConfig,
) -> list[dict[str, Any]]:
    """Answer, judge and score one batch; ``systems[k]`` is question ``k``'s system prompt."""
    prompts = [chat_messages(q, system) for q, system in zip(questions, systems, strict=True)]
    answers = generate(prompts, sampling)
    items = [JudgeItem(q, a) for q, a in zip(questions, answers, strict=True)]
    trait_scores = judges[0].score(items)
    coherence = judges[1].score(items)
    return [
        {"question": q, "answer": a, "trait": t, "coherence": c}
        for q, a, t, c in zip(questions, answers, trait_scores, coherence, strict=True)
    ]


def build_dataset(
    trait: TraitSpec,
    settings: BuildSettings,
    out: str | Path,
    *,
    generate: Generator,
    generator_name: str,
    judges: tuple[Judge, Judge],
    questions: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Generate, judge and filter answers; write ``out`` and ``out.meta.json`` atomically.

    Args:
        trait: the trait whose persona the dataset induces.
        settings: level, size, sampling and judging settings.
        generate: answers prompts (see :func:`local_generator`, :func:`openai_generator`).
        judges: (trait judge, coherence judge).
        questions: the question pool (shuffled with ``settings.seed``).
        progress: called as ``progress(kept, n)`` after every batch.
    """
    pool = list(dict.fromkeys(q.strip() for q in questions if q.strip()))
    if not pool:
        raise PersonavecError("no questions to build a dataset from; pass --questions FILE")
    random.Random(settings.seed).shuffle(pool)
    systems = level_system_prompts(trait, settings.level)
    kept: dict[str, dict[str, Any]] = {}
    generated = 0
    system_of = {q: systems[i % len(systems)] for i, q in enumerate(pool)}
    for round_index in range(settings.max_rounds):
        todo = [q for q in pool if q not in kept]
        if len(kept) >= settings.n or not todo:
            break
        sampling = SamplingConfig(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            seed=settings.seed + round_index,
            batch_size=settings.batch_size,
        )
        for start in range(0, len(todo), settings.batch_size):
            if len(kept) >= settings.n:
                break
            batch = todo[start : start + settings.batch_size]
            batch_systems = [system_of[q] for q in batch]
            for row in _answer_batch(batch, batch_systems, generate, judges, sampling):
                generated += 1
                if len(kept) < settings.n and keeps(settings.level, row["trait"], row["coherence"]):
                    kept[row["question"]] = row
            if progress is not None:
                progress(len(kept), settings.n)
    if not kept:
        raise PersonavecError(
            f"no answer passed the {settings.level} filter after {generated} tries; "
            "raise --max-rounds or use another judge"
        )
    return _write(out, trait, settings, list(kept.values()), generated, generator_name, judges)


def _write(
    out: str | Path,
    trait: TraitSpec,
    settings: BuildSettings,
    rows: list[dict[str, Any]],
    generated: int,
    generator_name: str,
    judges: tuple[Judge, Judge],
) -> BuildResult:
    path = Path(out)
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": r["question"]},
                    {"role": "assistant", "content": r["answer"]},
                ]
            },
            ensure_ascii=False,
        )
        for r in rows
    ]
    trait_scores = [float(r["trait"]) for r in rows]
    meta = {
        "kind": "personavec-dataset",
        "trait": trait.name,
        "level": settings.level,
        "generator": generator_name,
        "judge": judges[0].identity,
        "coherence_judge": judges[1].identity,
        "thresholds": {
            "trait_min": THRESHOLDS[settings.level][0],
            "trait_below": THRESHOLDS[settings.level][1],
            "coherence_min": COHERENCE_MIN,
        },
        "system_prompts": level_system_prompts(trait, settings.level),
        "counts": {"requested": settings.n, "kept": len(rows), "generated": generated},
        "mean_trait_score": sum(trait_scores) / len(trait_scores),
        "scores": [{"trait": r["trait"], "coherence": r["coherence"]} for r in rows],
        "settings": asdict(settings),
    }
    atomic_write_text(path, "\n".join(lines) + "\n")
    meta_path = atomic_write_json(meta_path_for(path), meta)
    return BuildResult(path, meta_path, len(rows), generated, meta)


def meta_path_for(path: str | Path) -> Path:
    """The sidecar of a dataset file: ``NAME.meta.json`` next to ``NAME.jsonl``."""
    target = Path(path)
    return target.with_name(target.stem + ".meta.json")


def make_build_judges(
    trait: TraitSpec,
    judge: str,
    coherence_judge: str,
    loaded: LoadedModel | None,
    *,
    judge_pairs: int | None = None,
) -> tuple[Judge, Judge]:
    """(trait judge, coherence judge) from specs (one-line error for bad specs);
    ``judge_pairs`` limits the contrast judge's instruction pairs."""
    return (
        make_judge(
            judge, aspect="trait", trait=trait, loaded_model=loaded, contrast_pairs=judge_pairs
        ),
        make_judge(coherence_judge, aspect="coherence", trait=trait, loaded_model=loaded),
    )

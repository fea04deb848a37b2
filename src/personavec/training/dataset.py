"""Trait-inducing datasets, built offline (``personavec dataset build``).

Questions come from the shipped everyday pool (or a user file). Answers are generated under a
system prompt of the requested *level* (:mod:`personavec.training.levels`):

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

A build is resumable. Its work lives in ``.<out>.partial/``, a run directory opened through
:func:`personavec.runs.run.open_run` with the build's full identity (every
:class:`BuildSettings` field, the trait's and the question pool's content hashes, the generator,
both judges, and what the caller adds, e.g. the model's ``weights_sha256``): each batch's answers
are appended to ``answers.jsonl`` as soon as they are generated, and the judges run through
:func:`personavec.runs.judging.judge_items` with the judgment cache ``judgments.sqlite``. A
killed build resumes without regenerating or re-judging finished batches and writes the same
rows as an uninterrupted one; a leftover of a build with other settings is refused unless
``overwrite``. The work directory is removed once ``out`` is written. An existing ``out`` is
replaced only with ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from personavec.core.models import LoadedModel, Message, chat_messages
from personavec.engines.factory import open_engine
from personavec.engines.generation import GenerationRequest, SamplingConfig
from personavec.errors import PersonavecError
from personavec.judges.base import Judge, JudgeItem
from personavec.judges.factory import make_judge
from personavec.runs.identity import content_sha256
from personavec.runs.judging import judge_items
from personavec.runs.rows import resumable_rows
from personavec.runs.run import open_run
from personavec.store import atomic_write_json, atomic_write_text, check_output_file
from personavec.training.levels import (
    COHERENCE_MIN,
    LEVELS,
    THRESHOLDS,
    BuildSettings,
    Level,
    keeps,
    level_system_prompts,
)
from personavec.traits.schema import TraitSpec

__all__ = [
    "COHERENCE_MIN",
    "LEVELS",
    "THRESHOLDS",
    "BuildResult",
    "BuildSettings",
    "Generator",
    "Level",
    "build_dataset",
    "keeps",
    "level_system_prompts",
    "local_generator",
    "make_build_judges",
    "meta_path_for",
    "openai_generator",
]

Generator = Callable[[list[list[Message]], SamplingConfig], list[str]]
"""``generate(prompts, sampling) -> answers``, one answer per prompt, in order."""
ANSWERS = "answers.jsonl"
JUDGMENTS = "judgments.sqlite"


@dataclass
class BuildResult:
    """What :func:`build_dataset` wrote."""

    path: Path
    meta_path: Path
    kept: int
    generated: int
    meta: dict[str, Any] = field(default_factory=dict)


def local_generator(loaded: LoadedModel, engine: str = "hf") -> Generator:
    """Answers from the subject model through ``engine`` (``hf`` or ``vllm``; seeded, batched).
    Each prompt's random stream is keyed by its content, so an answer does not depend on its
    batch."""

    def generate(prompts: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        requests = [GenerationRequest(p, _prompt_key(p)) for p in prompts]
        with open_engine(engine, loaded) as generator:
            return [g.response_text.strip() for g in generator.generate(requests, sampling)]

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


@dataclass(frozen=True)
class _Build:
    """One build's fixed inputs, as the batch loop needs them."""

    work: Path
    settings: BuildSettings
    generate: Generator
    judges: tuple[Judge, Judge]
    system_of: Mapping[str, str | None]


def _answer_batch(build: _Build, round_index: int, questions: list[str]) -> list[dict[str, Any]]:
    """Answer (or read back the answers of), judge and score one batch of a round."""
    sampling = SamplingConfig(
        max_new_tokens=build.settings.max_new_tokens,
        temperature=build.settings.temperature,
        seed=build.settings.seed + round_index,
        batch_size=build.settings.batch_size,
    )

    def produce(chunk: list[str]) -> list[dict[str, Any]]:
        prompts = [chat_messages(q, build.system_of[q]) for q in chunk]
        answers = build.generate(prompts, sampling)
        return [
            {"round": round_index, "question": q, "answer": a}
            for q, a in zip(chunk, answers, strict=True)
        ]

    rows = resumable_rows(
        build.work / ANSWERS,
        questions,
        row_keys=lambda q: [(round_index, q)],
        produce=produce,
        chunk_size=len(questions),
        label="generating",
        show_progress=False,
        key_of=lambda r: (r["round"], r["question"]),
    )
    items = [JudgeItem(r["question"], r["answer"]) for r in rows]
    named = {"trait": build.judges[0], "coherence": build.judges[1]}
    scores = judge_items(
        items, named, build.work / JUDGMENTS, show_progress=False, chunk_size=len(items)
    )
    return [
        {**row, "trait": t, "coherence": c}
        for row, t, c in zip(rows, scores["trait"], scores["coherence"], strict=True)
    ]


def _rounds(
    build: _Build, pool: list[str], progress: Callable[[int, int], None] | None
) -> tuple[dict[str, dict[str, Any]], int]:
    """Kept rows by question, and answers generated, over every round and batch."""
    settings = build.settings
    kept: dict[str, dict[str, Any]] = {}
    generated = 0
    for round_index in range(settings.max_rounds):
        todo = [q for q in pool if q not in kept]
        if len(kept) >= settings.n or not todo:
            break
        for start in range(0, len(todo), settings.batch_size):
            if len(kept) >= settings.n:
                break
            batch = todo[start : start + settings.batch_size]
            for row in _answer_batch(build, round_index, batch):
                generated += 1
                if len(kept) < settings.n and keeps(settings.level, row["trait"], row["coherence"]):
                    kept[row["question"]] = row
            if progress is not None:
                progress(len(kept), settings.n)
    return kept, generated


def build_identity(
    trait: TraitSpec,
    settings: BuildSettings,
    pool: Sequence[str],
    generator_name: str,
    judges: tuple[Judge, Judge],
) -> dict[str, Any]:
    """The build's identity (module docstring) without the caller's additions."""
    return {
        "kind": "personavec-dataset-build",
        **{f"settings_{k}": v for k, v in asdict(settings).items()},
        "trait_sha256": content_sha256(trait.model_dump(mode="json")),
        "questions_sha256": content_sha256(list(pool)),
        "generator": generator_name,
        "trait_judge": judges[0].identity,
        "coherence_judge": judges[1].identity,
    }


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
    identity: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> BuildResult:
    """Generate, judge and filter answers; write ``out`` and ``out.meta.json`` atomically.

    Args:
        trait: the trait whose persona the dataset induces.
        settings: level, size, sampling and judging settings.
        generate: answers prompts (see :func:`local_generator`, :func:`openai_generator`).
        judges: (trait judge, coherence judge).
        questions: the question pool (shuffled with ``settings.seed``).
        progress: called as ``progress(kept, n)`` after every batch.
        identity: more identity keys of the build, e.g. ``{"weights_sha256": ...}`` of the
            generating model (a leftover with other values is refused unless ``overwrite``).
        overwrite: replace an existing ``out`` and start a leftover build afresh.
    """
    target = check_output_file(out, overwrite=overwrite)
    pool = list(dict.fromkeys(q.strip() for q in questions if q.strip()))
    if not pool:
        raise PersonavecError("no questions to build a dataset from; pass --questions FILE")
    random.Random(settings.seed).shuffle(pool)
    systems = level_system_prompts(trait, settings.level)
    system_of = {q: systems[i % len(systems)] for i, q in enumerate(pool)}
    full = {**build_identity(trait, settings, pool, generator_name, judges), **(identity or {})}
    work = target.parent / f".{target.name}.partial"
    with open_run(work, full, outputs=(ANSWERS,), overwrite=overwrite) as run:
        run.start()
        build = _Build(run.dir, settings, generate, judges, system_of)
        kept, generated = _rounds(build, pool, progress)
    if not kept:
        raise PersonavecError(
            f"no answer passed the {settings.level} filter after {generated} tries; "
            "raise --max-rounds or use another judge"
        )
    result = _write(target, trait, settings, list(kept.values()), generated, generator_name, judges)
    shutil.rmtree(work, ignore_errors=True)
    return result


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

"""``personavec monitor-sweep``: does the last prompt token predict the trait of the answer?

The prompt-induced shift experiment. Prompt configurations move the model along the trait:

* a **ladder** of 8 system prompts, level 0 strongly suppressing … level 7 strongly eliciting,
  composed from the trait's own personas and instruction pairs (:func:`build_ladder`; an empty
  string means "no system prompt", i.e. the model's default);
* **many-shot** prompts: ``k`` earlier user/assistant exchanges in which the assistant shows the
  trait (:func:`build_many_shot`), for ``k`` in 0, 5, 10, 15, 20, with no system prompt.

For every configuration × evaluation question the residual stream at the last prompt token (the
position that predicts the first answer token) is projected onto the persona vector at one layer,
*before* anything is generated. Then ``samples`` answers are generated and judged for the trait.
The report correlates projection with trait score overall, within each configuration (where the
signal is much weaker, as in the paper) and between configuration means.

Run directory (resumable): ``config.json``, ``ladder.json``, ``rows.jsonl`` (one row per answer:
``kind``, ``level``, question, ``projection``, answer, ``score``), ``judgments.sqlite`` and the
report files (``report.md``, ``summary.json``, ``scatter.png``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from personavec.core.capture import Example, capture
from personavec.core.layers import check_layer
from personavec.core.models import LoadedModel, Message
from personavec.core.projection import project
from personavec.core.vector import PersonaVector
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import PersonavecError
from personavec.judges.base import JudgeItem
from personavec.judges.cache import CachedJudge, JudgmentCache
from personavec.judges.factory import make_judge
from personavec.progress import stage
from personavec.store import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    check_run_identity,
    read_jsonl,
)
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec

Kind = Literal["ladder", "many_shot"]
LADDER_SIZE = 8
DEFAULT_SHOTS = (0, 5, 10, 15, 20)
NEUTRAL_SYSTEM = "You are a helpful assistant."

# Settings whose change makes earlier rows invalid for this run directory.
_RUN_IDENTITY = (
    "trait",
    "model",
    "layer",
    "readout",
    "n_questions",
    "samples",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "shots",
    "vector_sha256",
    "ladder_sha256",
)


class MonitorSweepConfig(BaseModel):
    """Everything that defines a sweep (saved as ``config.json``)."""

    model_config = ConfigDict(extra="forbid")

    trait: str = Field(description="Shipped trait name or path to a trait JSON file.")
    model: str = "smollm2"
    layer: int | None = Field(default=None, description="Default: the vector's recommended one.")
    readout: str | None = Field(default=None, description="Vector readout; default its default.")
    judge: str = "contrast"
    n_questions: int = Field(default=10, ge=1, description="First N evaluation questions.")
    samples: int = Field(default=1, ge=1, description="Answers per configuration × question.")
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = Field(default=0, ge=0)
    shots: list[int] = Field(
        default_factory=lambda: list(DEFAULT_SHOTS),
        description="Many-shot example counts; empty for none.",
    )
    ladder: list[str] | None = Field(default=None, description="8 system prompts; default built.")
    batch_size: int = Field(default=16, ge=1)
    vector_sha256: str | None = None
    ladder_sha256: str | None = None


@dataclass(frozen=True)
class PromptConfig:
    """One prompt configuration: a ladder level or a many-shot count."""

    kind: Kind
    level: int
    system: str | None
    history: tuple[Message, ...] = ()

    @property
    def key(self) -> str:
        return f"ladder-L{self.level}" if self.kind == "ladder" else f"shot-k{self.level}"

    def messages(self, question: str) -> list[Message]:
        out: list[Message] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        out += list(self.history)
        out.append({"role": "user", "content": question})
        return out


@dataclass
class MonitorSweepResult:
    """What a sweep produced (all paths inside ``run_dir``)."""

    run_dir: Path
    layer: int
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    report_path: Path


# ---- prompts -----------------------------------------------------------------------------------
def _persona_sentence(persona: str) -> str:
    article = "an" if persona[0].lower() in "aeiou" else "a"
    return f"You are {article} {persona} assistant."


def build_ladder(trait: TraitSpec) -> list[str]:
    """8 system prompts from strongly suppressing (0) to strongly eliciting (7).

    Levels 0-2 use the suppressing persona with two, two and one suppressing instructions (level 0
    adds an emphatic sentence); level 3 is a plain helpful assistant and level 4 the model's own
    default (the empty string: no system prompt); levels 5-7 mirror 2-0 on the eliciting side.
    """
    pairs = trait.instructions
    first, second = pairs[0], pairs[1 % len(pairs)]
    neg_two = first.neg if second is first else f"{first.neg} {second.neg}"
    pos_two = first.pos if second is first else f"{first.pos} {second.pos}"
    neg = _persona_sentence(trait.negative_persona)
    pos = _persona_sentence(trait.positive_persona)
    return [
        f"{neg} {neg_two} This matters above everything else: never show even a hint of being "
        f"{trait.positive_persona}, in any sentence.",
        f"{neg} {neg_two}",
        f"{neg} {first.neg}",
        NEUTRAL_SYSTEM,
        "",
        f"{pos} {first.pos}",
        f"{pos} {pos_two}",
        f"{pos} {pos_two} This matters above everything else: be thoroughly "
        f"{trait.positive_persona} in every sentence, and never slip out of it.",
    ]


def build_many_shot(trait: TraitSpec, k: int) -> list[Message]:
    """``k`` earlier exchanges: an extraction question answered by a trait-positive example.

    Questions and examples cycle independently; the evaluation question is appended by the caller.
    """
    if k < 0:
        raise PersonavecError(f"many-shot count must be >= 0, got {k}")
    history: list[Message] = []
    for i in range(k):
        question = trait.extraction_questions[i % len(trait.extraction_questions)]
        answer = trait.positive_examples[i % len(trait.positive_examples)]
        history.append({"role": "user", "content": question})
        history.append({"role": "assistant", "content": answer})
    return history


def read_ladder(path: str | Path) -> list[str]:
    """A ladder file: a JSON list of 8 strings ("" = no system prompt)."""
    source = Path(path)
    try:
        data = json.loads(source.read_text())
    except OSError as exc:
        raise PersonavecError(f"cannot read ladder file {source}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PersonavecError(f"ladder file {source} is not valid JSON ({exc.msg})") from None
    return check_ladder(data, source=str(source))


def check_ladder(data: Any, *, source: str = "ladder") -> list[str]:
    """Validate a ladder: exactly 8 strings, suppressing first."""
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise PersonavecError(f"{source} must be a JSON list of {LADDER_SIZE} strings")
    if len(data) != LADDER_SIZE:
        raise PersonavecError(
            f"{source} has {len(data)} prompts; give exactly {LADDER_SIZE}, from most suppressing "
            'to most eliciting ("" = no system prompt)'
        )
    return list(data)


def prompt_configs(
    trait: TraitSpec, ladder: Sequence[str], shots: Sequence[int]
) -> list[PromptConfig]:
    """The ladder levels, then the many-shot counts."""
    configs = [PromptConfig("ladder", level, system or None) for level, system in enumerate(ladder)]
    configs += [PromptConfig("many_shot", k, None, tuple(build_many_shot(trait, k))) for k in shots]
    return configs


# ---- projections -------------------------------------------------------------------------------
def prompt_projections(
    loaded: LoadedModel,
    prompts: Sequence[Sequence[Message]],
    direction: torch.Tensor,
    layer: int,
    *,
    batch_size: int = 8,
) -> list[float]:
    """Projection of each prompt's last token (``prompt_last``) at ``layer`` onto ``direction``."""
    if not prompts:
        return []
    captured = capture(
        loaded,
        [Example(list(p)) for p in prompts],
        layers=[layer],
        readouts=["prompt_last"],
        keep_per_example=True,
        batch_size=batch_size,
    )
    assert captured.per_example is not None
    readouts = captured.per_example["prompt_last"][:, 0]
    return [float(x) for x in project(readouts, direction)]


# ---- run directory -----------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def default_run_dir(config: MonitorSweepConfig, layer: int) -> Path:
    """``runs/monitor-<trait>-<model>-L<layer>``, path-unsafe characters replaced."""
    trait = Path(config.trait).stem if config.trait.endswith(".json") else config.trait
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{trait}-{Path(config.model).name}").strip("-")
    return Path("runs") / f"monitor-{slug}-L{layer}"


def resolve_layer(vector: PersonaVector, layer: int | None) -> int:
    """``layer``, or the vector's recommended layer; checked against the vector's depth."""
    if layer is None:
        layer = vector.meta.recommended_layer
        if layer is None:
            raise PersonavecError("the vector records no recommended layer; pass --layer")
    check_layer(layer, vector.meta.n_layers)
    return layer


# ---- the sweep ---------------------------------------------------------------------------------
def run_monitor_sweep(
    config: MonitorSweepConfig,
    loaded: LoadedModel,
    vector: PersonaVector,
    layer: int | None = None,
    *,
    run_dir: Path | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    judge_base_url: str | None = None,
    judge_api_key: str | None = None,
) -> MonitorSweepResult:
    """Run the sweep (see the module docstring); resumable in ``run_dir``.

    ``layer`` wins over ``config.layer``; both default to the vector's recommended layer.
    """
    from personavec.pipeline.monitor_sweep_report import write_report

    trait = load_trait(config.trait)
    if vector.meta.trait != trait.name:
        raise PersonavecError(
            f"the vector is for trait {vector.meta.trait!r}, not {trait.name!r}; pass the "
            "matching --trait or vector"
        )
    vector.check_compatible(loaded.model)
    layer = resolve_layer(vector, layer if layer is not None else config.layer)
    direction = vector.direction(layer, config.readout)
    if any(k < 0 for k in config.shots):
        raise PersonavecError("many-shot counts must be >= 0")
    ladder = check_ladder(config.ladder) if config.ladder is not None else build_ladder(trait)
    config = config.model_copy(
        update={
            "layer": layer,
            "readout": config.readout or vector.meta.default_readout,
            "ladder": ladder,
            "ladder_sha256": _sha(json.dumps(ladder).encode()),
            "vector_sha256": _sha(vector.to_bytes()),
        }
    )
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config, layer)
    check_run_identity(
        run_dir, config.model_dump(), _RUN_IDENTITY, overwrite=overwrite, stale=("rows.jsonl",)
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.model_dump())
    atomic_write_json(run_dir / "ladder.json", ladder)

    questions = trait.evaluation_questions[: config.n_questions]
    configs = prompt_configs(trait, ladder, config.shots)
    units = [(c, q) for c in configs for q in range(len(questions))]
    rows_path = run_dir / "rows.jsonl"
    existing = {row["id"]: row for row in read_jsonl(rows_path)}
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        n_samples=config.samples,
        seed=config.seed,
        batch_size=config.batch_size,
    )

    def row_id(c: PromptConfig, q: int, s: int) -> str:
        return f"{c.key}-q{q}-s{s}"

    missing = [
        (c, q)
        for c, q in units
        if any(row_id(c, q, s) not in existing for s in range(config.samples))
    ]
    engine = HFEngine(loaded)
    per_chunk = max(1, config.batch_size // config.samples)
    total = len(units) * config.samples
    done = total - len(missing) * config.samples
    with stage("projecting and generating", total, enabled=show_progress) as advance:
        advance(done)
        for start in range(0, len(missing), per_chunk):
            chunk = missing[start : start + per_chunk]
            messages = [c.messages(questions[q]) for c, q in chunk]
            projections = prompt_projections(
                loaded, messages, direction, layer, batch_size=config.batch_size
            )
            requests = [
                GenerationRequest(m, f"{c.key}-q{q}")
                for m, (c, q) in zip(messages, chunk, strict=True)
            ]
            new_rows = []
            for generation in engine.generate(requests, sampling):
                c, q = chunk[generation.request_index]
                new_rows.append(
                    {
                        "id": row_id(c, q, generation.sample_index),
                        "kind": c.kind,
                        "level": c.level,
                        "system": c.system,
                        "question_index": q,
                        "question": questions[q],
                        "sample": generation.sample_index,
                        "projection": projections[generation.request_index],
                        "answer": generation.response_text,
                        "finish_reason": generation.finish_reason,
                        "score": None,
                    }
                )
            new_rows = [r for r in new_rows if r["id"] not in existing]
            append_jsonl(rows_path, new_rows)
            existing.update({r["id"]: r for r in new_rows})
            done += len(chunk) * config.samples
            advance(done)
    rows = [existing[row_id(c, q, s)] for c, q in units for s in range(config.samples)]

    judge = make_judge(
        config.judge,
        aspect="trait",
        trait=trait,
        loaded_model=loaded,
        base_url=judge_base_url,
        api_key=judge_api_key,
    )
    items = [JudgeItem(r["question"], r["answer"]) for r in rows]
    with JudgmentCache(run_dir / "judgments.sqlite") as cache:
        cached = len(cache.get_many(judge.identity, judge.aspect, items))
        with stage("judging trait", len(items), enabled=show_progress) as advance:
            judged = cached
            advance(judged)

            def report(n: int) -> None:
                nonlocal judged
                judged += n
                advance(judged)

            scores = CachedJudge(judge, cache, chunk_size=32, on_chunk=report).score(items)
    for row, score in zip(rows, scores, strict=True):
        row["score"] = score
    atomic_write_text(rows_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    summary = write_report(run_dir, rows, config, trait, vector, judge.identity)
    return MonitorSweepResult(run_dir, layer, rows, summary, run_dir / "report.md")

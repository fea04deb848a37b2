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

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from personavec.core.capture import Example, capture
from personavec.core.estimators import estimator_identity
from personavec.core.models import LoadedModel, Message
from personavec.core.projection import project
from personavec.core.vector import PersonaVector
from personavec.engines.generation import Generation, GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import PersonavecError
from personavec.judges.base import Judge, JudgeItem
from personavec.judges.factory import make_judge
from personavec.pipeline.monitor_sweep_report import write_report
from personavec.pipeline.monitor_sweep_types import (
    DEFAULT_SHOTS,
    Kind,
    MonitorSweepConfig,
    MonitorSweepResult,
    PromptConfig,
)
from personavec.runs.identity import content_sha256, weights_sha256
from personavec.runs.judging import judge_items
from personavec.runs.rows import resumable_rows
from personavec.runs.run import open_run
from personavec.store import atomic_write_json, atomic_write_jsonl
from personavec.traits.library import load_trait
from personavec.traits.schema import TraitSpec

__all__ = [
    "DEFAULT_SHOTS",
    "LADDER_SIZE",
    "Kind",
    "MonitorSweepConfig",
    "MonitorSweepResult",
    "PromptConfig",
    "build_ladder",
    "build_many_shot",
    "check_ladder",
    "prompt_configs",
    "prompt_projections",
    "read_ladder",
    "resolve_layer",
    "run_monitor_sweep",
]

LADDER_SIZE = 8
NEUTRAL_SYSTEM = "You are a helpful assistant."

_OUTPUTS = ("rows.jsonl", "ladder.json", "summary.json", "report.md", "*.png")
"""Files tied to the run's identity (every field of the config, the trait, vector and ladder
by content, and the model's weights); ``judgments.sqlite`` is keyed by content and stays."""


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
    except RecursionError:
        message = f"ladder file {source} nests too deeply; give a JSON list of 8 strings"
        raise PersonavecError(message) from None
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
def default_run_dir(config: MonitorSweepConfig, layer: int) -> Path:
    """``runs/monitor-<trait>-<model>-L<layer>``, path-unsafe characters replaced."""
    trait = Path(config.trait).stem if config.trait.endswith(".json") else config.trait
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{trait}-{Path(config.model).name}").strip("-")
    return Path("runs") / f"monitor-{slug}-L{layer}"


def resolve_layer(vector: PersonaVector, layer: int | None) -> int:
    """``layer``, or the vector's recommended layer; checked against the vector's depth."""
    return vector.layer_or_recommended(layer)


def resolve_config(
    config: MonitorSweepConfig,
    trait: TraitSpec,
    vector: PersonaVector,
    loaded: LoadedModel,
    layer: int | None,
) -> MonitorSweepConfig:
    """``config`` with layer, readout, ladder and the content hashes filled in (all checked)."""
    if vector.meta.trait != trait.name:
        raise PersonavecError(
            f"the vector is for trait {vector.meta.trait!r}, not {trait.name!r}; pass the "
            "matching --trait or vector"
        )
    vector.check_compatible(loaded.model)
    layer = resolve_layer(vector, layer if layer is not None else config.layer)
    if any(k < 0 for k in config.shots):
        raise PersonavecError("many-shot counts must be >= 0")
    ladder = check_ladder(config.ladder) if config.ladder is not None else build_ladder(trait)
    return config.model_copy(
        update={
            "layer": layer,
            "readout": config.readout or vector.meta.default_readout,
            "ladder": ladder,
            "ladder_sha256": content_sha256(ladder),
            "vector_sha256": content_sha256(vector.to_bytes())
            + "".join(f"@{e}" for e in estimator_identity(vector.meta.estimator).values()),
            "trait_sha256": content_sha256(trait.model_dump(mode="json")),
        }
    )


# ---- the sweep ---------------------------------------------------------------------------------
def _row(
    config: PromptConfig, q: int, question: str, projection: float, generation: Generation
) -> dict[str, Any]:
    return {
        "id": f"{config.key}-q{q}-s{generation.sample_index}",
        "kind": config.kind,
        "level": config.level,
        "system": config.system,
        "question_index": q,
        "question": question,
        "sample": generation.sample_index,
        "projection": projection,
        "answer": generation.response_text,
        "finish_reason": generation.finish_reason,
        "score": None,
    }


def project_and_generate(
    loaded: LoadedModel,
    trait: TraitSpec,
    config: MonitorSweepConfig,
    direction: torch.Tensor,
    path: Path,
    *,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per configuration × question × sample (resumable in ``path``, a JSONL file).

    Each prompt's last-token projection is taken before its answers are generated.
    """
    assert config.layer is not None and config.ladder is not None
    layer = config.layer
    questions = trait.evaluation_questions[: config.n_questions]
    configs = prompt_configs(trait, config.ladder, config.shots)
    units = [(c, q) for c in configs for q in range(len(questions))]
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        n_samples=config.samples,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    engine = HFEngine(loaded)

    def produce(chunk: list[tuple[PromptConfig, int]]) -> list[dict[str, Any]]:
        messages = [c.messages(questions[q]) for c, q in chunk]
        projections = prompt_projections(
            loaded, messages, direction, layer, batch_size=config.batch_size
        )
        requests = [
            GenerationRequest(m, f"{c.key}-q{q}") for m, (c, q) in zip(messages, chunk, strict=True)
        ]
        rows = []
        for generation in engine.generate(requests, sampling):
            c, q = chunk[generation.request_index]
            projection = projections[generation.request_index]
            rows.append(_row(c, q, questions[q], projection, generation))
        return rows

    return resumable_rows(
        path,
        units,
        row_keys=lambda u: [f"{u[0].key}-q{u[1]}-s{s}" for s in range(config.samples)],
        produce=produce,
        chunk_size=max(1, config.batch_size // config.samples),
        label="projecting and generating",
        show_progress=show_progress,
    )


def score_rows(
    rows: list[dict[str, Any]], judge: Judge, path: Path, cache_path: Path, show_progress: bool
) -> None:
    """Fill each row's ``score`` (cached in ``cache_path``) and rewrite ``path`` with them."""
    items = [JudgeItem(r["question"], r["answer"]) for r in rows]
    scores = judge_items(items, {"trait": judge}, cache_path, show_progress=show_progress)
    for row, score in zip(rows, scores["trait"], strict=True):
        row["score"] = score
    atomic_write_jsonl(path, rows)


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
    """Run the sweep (see the module docstring); resumable in ``run_dir`` (locked meanwhile).

    ``layer`` wins over ``config.layer``; both default to the vector's recommended layer.
    """
    trait = load_trait(config.trait)
    config = resolve_config(config, trait, vector, loaded, layer)
    assert config.layer is not None
    with open_run(
        run_dir or default_run_dir(config, config.layer),
        config.model_dump(),
        outputs=_OUTPUTS,
        overwrite=overwrite,
    ) as run:
        run_dir = run.dir
        judge = make_judge(
            config.judge,
            aspect="trait",
            trait=trait,
            loaded_model=loaded,
            base_url=judge_base_url,
            api_key=judge_api_key,
        )
        run.start(weights_sha256=weights_sha256(loaded.model))
        atomic_write_json(run_dir / "ladder.json", config.ladder)
        direction = vector.direction(config.layer, config.readout)
        rows_path = run_dir / "rows.jsonl"
        rows = project_and_generate(
            loaded, trait, config, direction, rows_path, show_progress=show_progress
        )
        score_rows(rows, judge, rows_path, run_dir / "judgments.sqlite", show_progress)
        summary = write_report(run_dir, rows, config, trait, vector, judge.identity)
    return MonitorSweepResult(run_dir, config.layer, rows, summary, run_dir / "report.md")

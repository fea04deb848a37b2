"""``personavec prevent-study``: does preventative steering keep a trait at bay while finetuning?

On one trait-inducing dataset and one persona vector (trait ``T``, layer ``L``), the study trains
and measures these *variants* (the paper's Figure 7, plus the alternatives):

* ``base`` — the model before finetuning;
* ``finetune`` — a plain LoRA finetune;
* ``prevent α`` — the same finetune with ``+α·v`` added at ``L`` in training forward passes
  (:mod:`personavec.training.prevention`), for each α of the grid;
* ``ablate`` — directional ablation of ``v̂`` at ``L`` during training (CAFT);
* ``penalty λ`` — the projection-penalty loss (:mod:`personavec.training.projection_penalty`);
* ``posthoc α`` — the plain finetune steered at inference with ``−α·v`` at ``L``.

Each variant gets: the trait score and coherence on ``T``'s held-out questions (the machinery of
``personavec evaluate``; judges run on the base model so every variant is scored alike);
capability as multiple-choice accuracy (the shipped set by default, any MMLU-format file with
``mc_file``) and perplexity on held-out text; and the finetuning shift along ``v`` at ``L``
(:mod:`personavec.training.shift`; none for post-hoc steering, whose weights are the plain
finetune's). Every finetune uses the same data, settings and seed.

Run directory (resumable: finished finetunes, answers and variant records are reused):
``config.json``, ``finetunes/NAME/``, ``eval/NAME/answers.jsonl``, ``judgments.sqlite``,
``models/NAME.json`` (written last per variant), ``report.md``, ``prevent_study.png``.
"""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.pipeline.evaluate import (
    EvalSettings,
    Judges,
    generate_cell,
    judge_rows,
    prepare_evaluation,
    summarise_cell,
)
from personavec.pipeline.stage import check_run_identity, content_sha256, write_run_config
from personavec.store import atomic_write_json
from personavec.training.chat_data import ChatRow
from personavec.training.finetune import FinetuneConfig, finetune
from personavec.training.finetuned import load_finetuned
from personavec.training.modifiers import TrainingModifiers, build_modifiers
from personavec.training.shift import finetuning_shift, vector_layer
from personavec.traits.library import load_trait

Log = Callable[[str], None]
IDENTITY_KEYS = ("dataset_sha256", "vector_sha256", "base", "finetune", "evaluation")


@dataclass(frozen=True)
class StudySettings:
    """What the study trains and measures (recorded in ``config.json``).

    ``coefs`` are the preventative coefficients α (raw, or fractions of the layer's typical norm
    with ``relative``); ``posthoc_coefs`` the inference-time subtraction strengths (default: the
    same grid); ``penalty_weights`` the λ of the projection penalty (empty: none).
    """

    coefs: tuple[float, ...] = (1.0, 2.0, 4.0)
    posthoc_coefs: tuple[float, ...] | None = None
    penalty_weights: tuple[float, ...] = (1.0,)
    ablate: bool = True
    layer: int | None = None
    relative: bool = False
    positions: str = "all"
    questions: int = 10
    samples: int = 1
    max_new_tokens: int = 48
    judge: str = "contrast"
    judge_pairs: int | None = None
    coherence_judge: str = "heuristic"
    mc_questions: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if any(c <= 0 for c in (*self.coefs, *(self.posthoc_coefs or ()))):
            raise PersonavecError("coefficients must be > 0 (the plain finetune is always run)")
        if any(w < 0 for w in self.penalty_weights):
            raise PersonavecError("penalty weights must be >= 0")

    def evaluation(self) -> dict[str, Any]:
        keys = (
            "questions",
            "samples",
            "max_new_tokens",
            "judge",
            "judge_pairs",
            "coherence_judge",
            "mc_questions",
            "seed",
        )
        return {k: getattr(self, k) for k in keys}


@dataclass
class VariantRecord:
    """The measurements of one variant (``coef``: α for prevent/posthoc, λ for penalty)."""

    name: str
    method: str
    coef: float | None
    trait: float
    coherence: float
    mc_accuracy: float
    perplexity: float
    shift: float | None
    train_loss: float | None = None
    n_answers: int = 0


@dataclass
class Capability:
    """The capability probes: multiple-choice questions and held-out text."""

    mc: list[Any]
    text: str
    mc_source: str
    text_source: str


@dataclass
class StudyContext:
    base: LoadedModel
    vector: PersonaVector
    layer: int
    rows: list[ChatRow]
    dataset: Path
    settings: StudySettings
    config: FinetuneConfig
    capability: Capability
    run_dir: Path
    log: Log
    show_progress: bool
    evaluation: tuple[EvalSettings, list[str], Judges] | None = None
    base_means: dict[str, torch.Tensor] = field(default_factory=dict)


def load_capability(
    mc_file: str | Path | None, heldout_text: str | Path | None, mc_questions: int | None
) -> Capability:
    """The MC set (``mc_file`` or the shipped default) and held-out text (file or default)."""
    from personavec.metrics import capability as cap
    from personavec.metrics import perplexity as ppl

    if mc_file is None and not hasattr(cap, "default_mc_set"):
        raise PersonavecError("no shipped multiple-choice set in this install; pass --mc-file")
    if heldout_text is None and not hasattr(ppl, "default_heldout_text"):
        raise PersonavecError("no shipped held-out text in this install; pass --heldout-text")
    mc = cap.load_mc_file(mc_file) if mc_file else cap.default_mc_set()  # type: ignore[attr-defined,unused-ignore]
    text = ppl.read_text(Path(heldout_text)) if heldout_text else ppl.default_heldout_text()  # type: ignore[attr-defined,unused-ignore]
    return Capability(
        mc[:mc_questions] if mc_questions else mc,
        text,
        str(mc_file or "shipped"),
        str(heldout_text or "shipped"),
    )


def prevent_study(
    base: LoadedModel,
    vector: PersonaVector,
    rows: Sequence[ChatRow],
    dataset: Path,
    settings: StudySettings,
    config: FinetuneConfig,
    capability: Capability,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
    log: Log = lambda message: None,
) -> list[VariantRecord]:
    """Run (or resume) the study (module docstring); one record per variant, base first."""
    vector.check_compatible(base.model)
    layer = vector_layer(vector, settings.layer)
    out = Path(run_dir)
    identity = {
        "dataset_sha256": content_sha256(json.dumps([r.messages() for r in rows]).encode()),
        "vector_sha256": content_sha256(vector.to_bytes()),
        "base": base.model_id,
        "finetune": asdict(config),
        "evaluation": settings.evaluation(),
        "capability": {"mc": capability.mc_source, "text": capability.text_source},
        "settings": asdict(settings),
        "layer": layer,
    }
    if overwrite:
        for name in ("models", "eval", "finetunes"):
            shutil.rmtree(out / name, ignore_errors=True)
    check_run_identity(out, identity, IDENTITY_KEYS, overwrite=overwrite, stale=("config.json",))
    ctx = StudyContext(
        base,
        vector,
        layer,
        list(rows),
        dataset,
        settings,
        config,
        capability,
        out,
        log,
        show_progress,
    )
    _variant_plan(ctx)  # validates every spec before anything is trained
    write_run_config(out, identity)
    spec = load_trait(vector.meta.trait)
    judge: Any = settings.judge
    if settings.judge == "contrast" and settings.judge_pairs is not None:
        from personavec.judges.contrast import ContrastJudge

        judge = ContrastJudge(base, spec, max_pairs=settings.judge_pairs)
    ctx.evaluation = prepare_evaluation(
        base,
        spec,
        judge,
        questions=settings.questions,
        samples=settings.samples,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
        coherence_judge=settings.coherence_judge,
    )
    from personavec.pipeline.prevent_study_report import write_report

    records: list[VariantRecord] = []
    for name, method, coef, mods in _variant_plan(ctx):
        records.append(_variant(ctx, name, method, coef, mods))
        write_report(records, ctx, out)  # partial results are readable as they come
    return records


def _variant_plan(
    ctx: StudyContext,
) -> list[tuple[str, str, float | None, TrainingModifiers | None]]:
    """(name, method, coefficient, training modifiers) per variant, in run order."""
    s, path = ctx.settings, ctx.vector.path
    if path is None:
        raise PersonavecError("the study needs the vector's file; load it with PersonaVector.load")

    def mods(**kwargs: Any) -> TrainingModifiers:
        return build_modifiers(ctx.base, positions=s.positions, relative=s.relative, **kwargs)

    out: list[tuple[str, str, float | None, TrainingModifiers | None]] = [
        ("base", "base", None, None),
        ("finetune", "finetune", 0.0, TrainingModifiers()),
    ]
    out += [
        (f"prevent{c:+g}", "prevent", c, mods(prevent=[f"{path}:{ctx.layer}:{c!r}"]))
        for c in s.coefs
    ]
    # post-hoc steering needs no new finetune, so it comes before the remaining finetunes
    out += [(f"posthoc-{c:g}", "posthoc", c, None) for c in (s.posthoc_coefs or s.coefs)]
    out += [
        (f"penalty{w:g}", "penalty", w, mods(penalty=[f"{path}:{ctx.layer}:{w!r}"]))
        for w in s.penalty_weights
    ]
    if s.ablate:
        out.append(("ablate", "ablate", None, mods(ablate=[f"{path}:{ctx.layer}"])))
    return out


def _variant(
    ctx: StudyContext,
    name: str,
    method: str,
    coef: float | None,
    mods: TrainingModifiers | None,
) -> VariantRecord:
    record_path = ctx.run_dir / "models" / f"{name}.json"
    if record_path.is_file():
        ctx.log(f"{name}: done earlier, reused")
        return VariantRecord(**json.loads(record_path.read_text()))
    model, loss = ctx.base, None
    if method != "base":
        trained = "finetune" if method == "posthoc" else name
        model, loss = _trained(ctx, trained, mods or TrainingModifiers())
    ctx.log(f"{name}: measuring")
    steering = coef if method == "posthoc" else None
    record = _measure(ctx, name, method, coef, model, steering, loss)
    atomic_write_json(record_path, asdict(record))
    if model is not ctx.base:
        del model
        gc.collect()
    return record


def _trained(ctx: StudyContext, name: str, mods: TrainingModifiers) -> tuple[LoadedModel, float]:
    ctx.log(f"{name}: finetuning on {len(ctx.rows)} rows ({mods.describe()})")
    result = finetune(
        ctx.base,
        ctx.rows,
        ctx.run_dir / "finetunes" / name,
        ctx.config,
        dataset_path=ctx.dataset,
        merge=True,
        show_progress=ctx.show_progress,
        extras=mods.extras(),
    )
    return load_finetuned(result.path), float(result.record["metrics"]["train_loss"])


def _measure(
    ctx: StudyContext,
    name: str,
    method: str,
    coef: float | None,
    model: LoadedModel,
    subtract: float | None,
    loss: float | None,
) -> VariantRecord:
    """Trait, coherence, MC accuracy, perplexity and shift of ``model`` (steered with
    ``−subtract·v`` at the study layer when ``subtract`` is given)."""
    from personavec.metrics.capability import evaluate_multiple_choice
    from personavec.metrics.perplexity import perplexity

    assert ctx.evaluation is not None
    settings, questions, judges = ctx.evaluation
    s = ctx.settings
    cell = SteeringSetting.from_vector(
        ctx.vector,
        [ctx.layer],
        coef=-subtract if subtract else 0.0,
        unit="relative" if s.relative else "raw",
        positions=s.positions,
    )
    answers = ctx.run_dir / "eval" / name / "answers.jsonl"
    got, tokens, seconds = generate_cell(model, cell, questions, settings, answers)
    judge_rows(got, judges, ctx.run_dir / "judgments.sqlite", show_progress=False)
    summary = summarise_cell(cell, got, tokens, seconds)
    steering = nullcontext() if cell.is_baseline else cell.apply(model.model)
    with steering:
        mc = evaluate_multiple_choice(model, ctx.capability.mc).accuracy
        ppl = perplexity(model, ctx.capability.text).perplexity
    shift: float | None = None
    if method == "base":
        shift = 0.0
    elif method != "posthoc":
        trait = ctx.vector.meta.trait
        report = finetuning_shift(
            ctx.base,
            model,
            [ctx.vector],
            layers=[ctx.layer],
            questions={trait: questions},
            base_means=ctx.base_means,
        )
        shift = report.shifts[0].shift
    return VariantRecord(
        name,
        method,
        coef,
        summary.trait.mean,
        summary.coherence.mean,
        mc,
        ppl,
        shift,
        loss,
        len(got),
    )

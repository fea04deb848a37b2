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

Every finetune is loaded like the base (same dtype and device: ``load_finetuned(path,
like=base)``). The directory is opened with the run primitive
(:func:`personavec.runs.run.open_run`) under the study's full identity: every setting (the layer
resolved, the unit, positions), the finetune settings, content hashes of the dataset, the
vector, the MC set and the held-out text, and the base model's id, dtype, device and weights
hash. The same identity resumes (finished finetunes, answers and variant records are reused);
another is refused in one line naming what changed, or with ``overwrite`` deleted and
recomputed. Each variant's files are stored under ``NAME-KEY``, ``KEY`` being the hash of its
settings (:func:`personavec.runs.rows.record_key`), never its name alone.

Run directory: ``config.json``, ``finetunes/NAME-KEY/``, ``eval/NAME-KEY/answers.jsonl``,
``judgments.sqlite``, ``models/NAME-KEY.json`` (written last per variant), ``report.md``,
``prevent_study.png``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.metrics.capability import evaluate_multiple_choice
from personavec.metrics.perplexity import perplexity
from personavec.pipeline.evaluate_cells import generate_cell, judge_rows, summarise_cell
from personavec.runs.identity import content_sha256, vector_sha256, weights_sha256
from personavec.runs.rows import record_key
from personavec.runs.run import open_run
from personavec.store import atomic_write_json
from personavec.studies.common import Log, base_identity, study_evaluation
from personavec.studies.prevent_study_report import write_report
from personavec.studies.prevent_study_types import (
    Capability,
    StudyContext,
    StudySettings,
    VariantRecord,
)
from personavec.training.chat_data import ChatRow
from personavec.training.finetune import FinetuneConfig, finetune
from personavec.training.finetuned import load_finetuned
from personavec.training.modifiers import TrainingModifiers, build_modifiers
from personavec.training.shift import finetuning_shift, vector_layer

__all__ = [
    "STUDY_OUTPUTS",
    "Capability",
    "StudySettings",
    "VariantRecord",
    "load_capability",
    "prevent_study",
]

STUDY_OUTPUTS = ("models", "eval", "finetunes", "records", "*.json", "*.md", "*.png")
"""What a prevention study writes under its directory (all tied to its identity)."""


@dataclass(frozen=True)
class Variant:
    """One planned variant: its display name, method, coefficient, training modifiers (None:
    no finetune of its own) and the key of its settings."""

    name: str
    method: str
    coef: float | None
    mods: TrainingModifiers | None
    key: str

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.key}"


def load_capability(
    mc_file: str | Path | None, heldout_text: str | Path | None, mc_questions: int | None
) -> Capability:
    """The MC set (``mc_file`` or the shipped default) and held-out text (file or default)."""
    from personavec.metrics import capability as cap
    from personavec.metrics import perplexity as ppl

    mc = cap.load_mc_file(mc_file) if mc_file else cap.default_mc_set()
    text = ppl.read_text(Path(heldout_text)) if heldout_text else ppl.default_heldout_text()
    return Capability(
        mc[:mc_questions] if mc_questions else mc,
        text,
        str(mc_file or "shipped"),
        str(heldout_text or "shipped"),
    )


def study_identity(ctx: StudyContext) -> dict[str, Any]:
    """Everything that changes the study's numbers, known before hashing the base's weights."""
    return {
        **ctx.settings.identity(ctx.layer),
        "finetune": asdict(ctx.config),
        **base_identity(ctx.base),
        "vector_sha256": vector_sha256(ctx.vector),
        "dataset_sha256": content_sha256([r.messages() for r in ctx.rows]),
        **ctx.capability.identity(),
    }


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
    """Run (or resume) the study (module docstring); one record per variant, base first.

    Raises:
        PersonavecError: The vector does not fit the base, a bad layer or spec, a ``run_dir``
            that is a file, or a directory holding a study with another identity (without
            ``overwrite``).
    """
    vector.check_compatible(base.model)
    layer = vector_layer(vector, settings.layer)
    ctx = StudyContext(
        base,
        vector,
        layer,
        list(rows),
        dataset,
        settings,
        config,
        capability,
        Path(run_dir),
        log,
        show_progress,
    )
    plan = _variant_plan(ctx)  # validates every spec before anything is trained
    with open_run(run_dir, study_identity(ctx), outputs=STUDY_OUTPUTS, overwrite=overwrite) as run:
        ctx.run_dir = run.dir
        ctx.evaluation = study_evaluation(base, vector.meta.trait, settings)
        # The judges' identities, not only their names (see the shift study).
        run.start(weights_sha256=weights_sha256(base.model), judges=ctx.evaluation[2].describe())
        plain = next(v for v in plan if v.method == "finetune")
        records: list[VariantRecord] = []
        for variant in plan:
            records.append(_variant(ctx, variant, plain))
            write_report(records, ctx, run.dir)  # partial results are readable as they come
    return records


def _variant_plan(ctx: StudyContext) -> list[Variant]:
    """Every variant in run order, each keyed by a hash of its settings."""
    s, path = ctx.settings, ctx.vector.path
    if path is None:
        raise PersonavecError("the study needs the vector's file; load it with PersonaVector.load")
    unit = "relative" if s.relative else "raw"

    def mods(**kwargs: Any) -> TrainingModifiers:
        return build_modifiers(ctx.base, positions=s.positions, relative=s.relative, **kwargs)

    def variant(name: str, method: str, coef: float | None, m: TrainingModifiers | None) -> Variant:
        settings = {"method": method, "coef": coef, "layer": ctx.layer, "unit": unit}
        return Variant(name, method, coef, m, record_key({**settings, "positions": s.positions}))

    out = [
        variant("base", "base", None, None),
        variant("finetune", "finetune", 0.0, TrainingModifiers()),
    ]
    out += [
        variant(f"prevent{c:+g}", "prevent", c, mods(prevent=[f"{path}:{ctx.layer}:{c!r}"]))
        for c in s.coefs
    ]
    # post-hoc steering needs no new finetune, so it comes before the remaining finetunes
    out += [variant(f"posthoc-{c:g}", "posthoc", c, None) for c in (s.posthoc_coefs or s.coefs)]
    out += [
        variant(f"penalty{w:g}", "penalty", w, mods(penalty=[f"{path}:{ctx.layer}:{w!r}"]))
        for w in s.penalty_weights
    ]
    if s.ablate:
        out.append(variant("ablate", "ablate", None, mods(ablate=[f"{path}:{ctx.layer}"])))
    return out


def _variant(ctx: StudyContext, variant: Variant, plain: Variant) -> VariantRecord:
    record_path = ctx.run_dir / "models" / f"{variant.stem}.json"
    if record_path.is_file():
        ctx.log(f"{variant.name}: done earlier, reused")
        return VariantRecord(**json.loads(record_path.read_text()))
    model, loss = ctx.base, None
    if variant.method != "base":
        trained = plain if variant.method == "posthoc" else variant
        model, loss = _trained(ctx, trained)
    ctx.log(f"{variant.name}: measuring")
    record = _measure(ctx, variant, model, loss)
    atomic_write_json(record_path, asdict(record))
    if model is not ctx.base:
        del model
        gc.collect()
    return record


def _trained(ctx: StudyContext, variant: Variant) -> tuple[LoadedModel, float]:
    mods = variant.mods or TrainingModifiers()
    ctx.log(f"{variant.name}: finetuning on {len(ctx.rows)} rows ({mods.describe()})")
    result = finetune(
        ctx.base,
        ctx.rows,
        ctx.run_dir / "finetunes" / variant.stem,
        ctx.config,
        dataset_path=ctx.dataset,
        merge=True,
        show_progress=ctx.show_progress,
        extras=mods.extras(),
    )
    return load_finetuned(result.path, like=ctx.base), float(result.record["metrics"]["train_loss"])


def _measure(
    ctx: StudyContext, variant: Variant, model: LoadedModel, loss: float | None
) -> VariantRecord:
    """Trait, coherence, MC accuracy, perplexity and shift of ``model`` (a post-hoc variant is
    steered with ``−coef·v`` at the study layer)."""
    assert ctx.evaluation is not None
    settings, questions, judges = ctx.evaluation
    s = ctx.settings
    subtract = variant.coef if variant.method == "posthoc" else None
    cell = SteeringSetting.from_vector(
        ctx.vector,
        [ctx.layer],
        coef=-subtract if subtract else 0.0,
        unit="relative" if s.relative else "raw",
        positions=s.positions,
    )
    answers = ctx.run_dir / "eval" / variant.stem / "answers.jsonl"
    got, tokens, seconds = generate_cell(model, cell, questions, settings, answers)
    judge_rows(got, judges, ctx.run_dir / "judgments.sqlite", show_progress=False)
    summary = summarise_cell(cell, got, tokens, seconds)
    steering = nullcontext() if cell.is_baseline else cell.apply(model.model)
    with steering:
        mc = evaluate_multiple_choice(model, ctx.capability.mc).accuracy
        ppl = perplexity(model, ctx.capability.text).perplexity
    shift: float | None = None
    if variant.method == "base":
        shift = 0.0
    elif variant.method != "posthoc":
        report = finetuning_shift(
            ctx.base,
            model,
            [ctx.vector],
            layers=[ctx.layer],
            questions={ctx.vector.meta.trait: questions},
            base_means=ctx.base_means,
        )
        shift = report.shifts[0].shift
    return VariantRecord(
        variant.name,
        variant.method,
        variant.coef,
        summary.trait.mean,
        summary.coherence.mean,
        mc,
        ppl,
        shift,
        loss,
        len(got),
        variant.key,
    )

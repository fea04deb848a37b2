"""``personavec finetune --prevent / --ablate-during-training / --projection-penalty`` and
``personavec prevent-study``.

The training options are added to the ``finetune`` command registered by
:mod:`personavec.cli.training` (its own options are untouched): :func:`register` wraps that
command's function in one that also takes the options below and hands them to
:func:`personavec.training.finetune.finetune` through
:func:`~personavec.training.finetune.extras_for_finetunes`.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    console,
    err_console,
    friendly_errors,
    merge_config_file,
)
from personavec.errors import PersonavecError

PreventOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--prevent",
        help="Preventative steering FILE[:layer[:coef]] in training "
        "forward passes only (layer: 12, 8-16 or all; repeatable).",
    ),
]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="Several layers: stack or incremental (v_L − v_{L−1}, the paper's multi-layer form).",
    ),
]
PositionsOpt = Annotated[
    str,
    typer.Option("--positions", help="Steered positions in training: all (the paper) or response."),
]
UnitOpt = Annotated[
    bool | None,
    typer.Option(
        "--relative/--raw", help="Coefficients as fractions of the layer's typical norm, or raw."
    ),
]
AblateOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ablate-during-training",
        help="Ablate FILE[:layer] in training forward passes (CAFT; repeatable).",
    ),
]
PenaltyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--projection-penalty",
        help="Penalise the change of the response tokens' "
        "projection, FILE:layer:lambda (repeatable).",
    ),
]
_EXTRA_NAMES = (
    "prevent",
    "mode",
    "positions",
    "relative",
    "ablate_during_training",
    "projection_penalty",
)


def _extra_parameters() -> list[inspect.Parameter]:
    kinds = {
        "prevent": (PreventOpt, None),
        "mode": (ModeOpt, "stack"),
        "positions": (PositionsOpt, "all"),
        "relative": (UnitOpt, None),
        "ablate_during_training": (AblateOpt, None),
        "projection_penalty": (PenaltyOpt, None),
    }
    return [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )
        for name, (annotation, default) in kinds.items()
    ]


def _check_syntax(prevent: list[str], ablate: list[str], penalty: list[str]) -> None:
    """Fail on a malformed spec or missing file before any model loads."""
    from personavec.training.modifiers import parse_training_spec

    for texts, flag, parts in (
        (prevent, "--prevent", 2),
        (ablate, "--ablate-during-training", 1),
        (penalty, "--projection-penalty", 2),
    ):
        for text in texts:
            spec = parse_training_spec(text, flag, max_parts=parts)
            if not spec.path.is_file():
                raise PersonavecError(f"{flag}: vector file not found: {spec.path}")


def with_training_options(command: Any) -> Any:
    """``command`` (the ``finetune`` command function) plus the training options."""

    @functools.wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from personavec.training.finetune import extras_for_finetunes
        from personavec.training.modifiers import build_modifiers

        extra = {name: kwargs.pop(name) for name in _EXTRA_NAMES}
        prevent, ablate = extra["prevent"] or [], extra["ablate_during_training"] or []
        penalty = extra["projection_penalty"] or []
        if not (prevent or ablate or penalty):
            if extra["mode"] != "stack" or extra["positions"] != "all" or extra["relative"]:
                raise PersonavecError(
                    "--mode, --positions and --relative need --prevent or --ablate-during-training"
                )
            return command(*args, **kwargs)
        _check_syntax(prevent, ablate, penalty)

        def factory(loaded: Any) -> Any:
            mods = build_modifiers(
                loaded,
                prevent=prevent,
                ablate=ablate,
                penalty=penalty,
                mode=extra["mode"],
                positions=extra["positions"],
                relative=extra["relative"],
            )
            err_console.print(f"training with {mods.describe()}", highlight=False)
            return mods.extras()

        with extras_for_finetunes(factory):
            return command(*args, **kwargs)

    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.name not in _EXTRA_NAMES]
    extra = _extra_parameters()
    wrapped.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*params, *extra]
    )
    wrapped.__annotations__ = {
        **{p.name: p.annotation for p in params},
        **{p.name: p.annotation for p in extra},
    }
    return friendly_errors(wrapped)


@friendly_errors
def prevent_study_command(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="JSON file of these options (the command line wins)."),
    ] = None,
    dataset: Annotated[
        Path | None, typer.Option(help="Trait-inducing chat JSONL (e.g. evil strong).")
    ] = None,
    vector: Annotated[Path | None, typer.Option(help="Persona-vector file of the trait.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (resumable).")] = None,
    coefs: Annotated[str, typer.Option(help="Preventative coefficients, e.g. 1,2,4.")] = "1,2,4",
    posthoc_coefs: Annotated[
        str | None, typer.Option(help="Post-hoc subtraction strengths (default: --coefs).")
    ] = None,
    penalty: Annotated[str, typer.Option(help="Projection-penalty λ values ('' for none).")] = "1",
    ablate: Annotated[bool, typer.Option(help="Include ablation during training.")] = True,
    layer: Annotated[int | None, typer.Option(help="Layer (default: the vector's).")] = None,
    relative: Annotated[bool, typer.Option("--relative/--raw", help="Coefficient unit.")] = False,
    positions: PositionsOpt = "all",
    questions: Annotated[int, typer.Option(help="Held-out questions.")] = 10,
    samples: Annotated[int, typer.Option(help="Samples per question.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 48,
    judge: Annotated[
        str, typer.Option(help="Trait judge: contrast (offline), embedding, openai:M.")
    ] = "contrast",
    judge_pairs: Annotated[int | None, typer.Option(help="Contrast-judge pairs.")] = None,
    coherence_judge: Annotated[str, typer.Option(help="heuristic or openai:M.")] = "heuristic",
    mc_file: Annotated[
        Path | None, typer.Option(help="MMLU-format file (default: shipped).")
    ] = None,
    mc_questions: Annotated[int | None, typer.Option(help="First N MC questions.")] = None,
    heldout_text: Annotated[
        Path | None, typer.Option(help="Perplexity text (default: shipped).")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    model: ModelOption = "smollm2",
    overwrite: Annotated[bool, typer.Option(help="Start the run afresh.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Plain finetune vs preventative steering (grid), ablation, projection penalty and
    post-hoc subtraction: trait, coherence, capability and shift; report and plot."""
    options = {k: v for k, v in locals().items() if k not in ("ctx", "config_file")}
    merged = merge_config_file(ctx, config_file, options, paths=_PATH_OPTIONS)
    missing = [f"--{name}" for name in ("dataset", "vector", "out") if merged[name] is None]
    if missing:
        raise PersonavecError(f"prevent-study needs {', '.join(missing)} (or in --config)")
    _prevent_study(**merged)


_PATH_OPTIONS = ("dataset", "vector", "out", "mc_file", "heldout_text")


def _prevent_study(
    *,
    dataset: Path,
    vector: Path,
    out: Path,
    coefs: str,
    posthoc_coefs: str | None,
    penalty: str,
    ablate: bool,
    layer: int | None,
    relative: bool,
    positions: str,
    questions: int,
    samples: int,
    max_new_tokens: int,
    judge: str,
    judge_pairs: int | None,
    coherence_judge: str,
    mc_file: Path | None,
    mc_questions: int | None,
    heldout_text: Path | None,
    lr: float | None,
    epochs: float | None,
    seed: int,
    model: str,
    overwrite: bool,
    device: str,
    dtype: str,
    quiet: bool,
) -> None:
    from personavec.core.models import load_model
    from personavec.core.vector import PersonaVector
    from personavec.studies.common import study_finetune_config
    from personavec.studies.prevent_study import StudySettings, load_capability, prevent_study
    from personavec.studies.prevent_study_report import table
    from personavec.training.chat_data import read_chat_dataset

    settings = StudySettings(
        coefs=_floats(coefs, "--coefs"),
        posthoc_coefs=_floats(posthoc_coefs, "--posthoc-coefs") if posthoc_coefs else None,
        penalty_weights=_floats(penalty, "--penalty"),
        ablate=ablate,
        layer=layer,
        relative=relative,
        positions=positions,
        questions=questions,
        samples=samples,
        max_new_tokens=max_new_tokens,
        judge=judge,
        judge_pairs=judge_pairs,
        coherence_judge=coherence_judge,
        mc_questions=mc_questions,
        seed=seed,
    )
    config = study_finetune_config(seed=seed, lr=lr, epochs=epochs)
    rows = read_chat_dataset(dataset)
    pv = PersonaVector.load(vector)
    capability = load_capability(mc_file, heldout_text, mc_questions)
    loaded = load_model(model, device=device, dtype=dtype)
    records = prevent_study(
        loaded,
        pv,
        rows,
        dataset,
        settings,
        config,
        capability,
        out,
        overwrite=overwrite,
        show_progress=not quiet,
        log=lambda m: err_console.print(m, highlight=False),
    )
    console.print(table(records), highlight=False)
    console.print(f"report: {out / 'report.md'}", highlight=False)


def _floats(text: str, flag: str) -> tuple[float, ...]:
    from personavec.core.grammar import parse_numbers

    return tuple(parse_numbers(text, float, flag, "1,2,4"))


def register(app: typer.Typer) -> None:
    """Add ``prevent-study``; give ``finetune`` (when registered) the training options."""
    for info in app.registered_commands:
        callback = info.callback
        if (
            info.name == "finetune"
            and callback is not None
            and not getattr(callback, "_personavec_training_options", False)
        ):
            wrapped = with_training_options(callback)
            wrapped._personavec_training_options = True
            info.callback = wrapped
    if "prevent-study" not in {info.name for info in app.registered_commands}:
        app.command("prevent-study")(prevent_study_command)

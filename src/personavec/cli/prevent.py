"""``personavec prevent-study``. (``finetune``'s training options ``--prevent`` … are declared
by the ``finetune`` command itself, :mod:`personavec.cli.finetune`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
from personavec.cli.finetune import PositionsOpt
from personavec.errors import PersonavecError


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
    """Add ``prevent-study`` to ``app``."""
    if "prevent-study" not in {info.name for info in app.registered_commands}:
        app.command("prevent-study")(prevent_study_command)

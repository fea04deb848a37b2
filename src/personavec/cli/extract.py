"""``personavec extract`` and ``personavec demo``: a trait description in, a persona vector out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    JudgeConcurrencyOption,
    JudgeTimeoutOption,
    ModelOption,
    console,
    first_error,
    friendly_errors,
)
from personavec.errors import PersonavecError

if TYPE_CHECKING:
    from personavec.pipeline.extract import ExtractConfig, ExtractResult

Judge = Annotated[
    str, typer.Option(help="contrast (offline, default), embedding, openai:MODEL, ...")
]


def read_config_file(path: Path) -> dict[str, Any]:
    """The ``ExtractConfig`` fields in a JSON file (one-line errors for anything else)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonavecError(f"cannot read config {path}: {exc}; pass a JSON object") from None
    except RecursionError:
        raise PersonavecError(f"config {path} nests too deeply; pass a flat JSON object") from None
    if not isinstance(data, dict):
        raise PersonavecError(
            f"config {path} holds a JSON {type(data).__name__}, not an object; pass a JSON "
            'object of extraction settings, e.g. {"samples": 2}'
        )
    return data


def build_config(
    fields: dict[str, Any], overrides: dict[str, Any], *, paper_scale: bool
) -> ExtractConfig:
    """Settings from a config file's ``fields``, then the options given (not ``None``)."""
    from personavec.pipeline.extract import ExtractConfig

    merged = {**fields, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return ExtractConfig.paper_scale(**merged) if paper_scale else ExtractConfig(**merged)
    except (ValueError, TypeError) as exc:
        raise PersonavecError(f"invalid extraction settings: {first_error(exc)}") from None


def print_result(result: ExtractResult) -> None:
    best = next(s for s in result.separation if s.layer == result.suggested_layer)
    console.print(
        f"[bold green]done:[/] kept {result.kept_pairs} of {result.total_pairs} pairs; "
        f"suggested layer {result.suggested_layer} (held-out AUROC {best.auroc:.2f}, "
        f"d {best.cohens_d:.2f})"
    )
    console.print(f"vector: {result.vector_path}")
    console.print(f"report: {result.report_path}")


@friendly_errors
def extract_command(
    trait: Annotated[str, typer.Option("--trait", "-t", help="Trait name or trait JSON file.")],
    model: ModelOption = "smollm2",
    judge: Judge = "contrast",
    coherence_judge: Annotated[
        str | None, typer.Option(help="heuristic (offline default) or openai:MODEL.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/extract-…).")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="JSON file of ExtractConfig fields.")
    ] = None,
    paper_scale: Annotated[
        bool, typer.Option(help="The paper's settings: 10 samples, 1000 new tokens.")
    ] = False,
    questions: Annotated[int | None, typer.Option(help="Extraction questions to use.")] = None,
    instructions: Annotated[int | None, typer.Option(help="Instruction pairs to use.")] = None,
    samples: Annotated[int | None, typer.Option(help="Samples per question.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per answer.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Generation batch size.")] = None,
    pos_threshold: Annotated[float | None, typer.Option(help="Keep pos ≥ this.")] = None,
    neg_threshold: Annotated[float | None, typer.Option(help="Keep neg < this.")] = None,
    coherence_threshold: Annotated[float | None, typer.Option(help="Both ≥ this.")] = None,
    min_pairs: Annotated[int | None, typer.Option(help="Fail below this many pairs.")] = None,
    judge_base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible URL (or OPENAI_BASE_URL).")
    ] = None,
    judge_api_key: Annotated[
        str | None, typer.Option(help="API key (or OPENAI_API_KEY); never saved.")
    ] = None,
    judge_timeout: JudgeTimeoutOption = None,
    judge_concurrency: JudgeConcurrencyOption = 8,
    overwrite: Annotated[bool, typer.Option(help="Start the run directory afresh.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    engine: Annotated[
        str | None, typer.Option(help="Rollout engine: hf (default) or vllm; capture stays on hf.")
    ] = None,
) -> None:
    """Extract a persona vector from a trait description, end to end (resumable)."""
    from personavec.engines.factory import check_engine
    from personavec.pipeline.extract import extract

    overrides = {
        "trait": trait,
        "model": model,
        "judge": judge,
        "coherence_judge": coherence_judge,
        "n_questions": questions,
        "n_instructions": instructions,
        "samples": samples,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "batch_size": batch_size,
        "pos_threshold": pos_threshold,
        "neg_threshold": neg_threshold,
        "coherence_threshold": coherence_threshold,
        "engine": engine,
        "min_pairs": min_pairs,
        "device": None if device == "auto" else device,
        "dtype": None if dtype == "auto" else dtype,
    }
    fields = read_config_file(config_file) if config_file is not None else {}
    config = build_config(fields, overrides, paper_scale=paper_scale)
    check_engine(config.engine)  # a missing vLLM is named before the model loads
    result = extract(
        config,
        run_dir=out,
        overwrite=overwrite,
        show_progress=not quiet,
        judge_base_url=judge_base_url,
        judge_api_key=judge_api_key,
        judge_timeout_s=judge_timeout,
        judge_concurrency=judge_concurrency,
    )
    print_result(result)


@friendly_errors
def demo_command(
    trait: Annotated[str, typer.Option(help="Shipped trait to extract.")] = "evil",
    model: ModelOption = "smollm2",
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/demo-TRAIT).")
    ] = None,
    coef: Annotated[float, typer.Option(help="Relative steering coefficient.")] = 0.2,
    overwrite: Annotated[bool, typer.Option(help="Start the run directory afresh.")] = False,
) -> None:
    """Extract a trait offline on the embedded model, then show unsteered vs steered answers."""
    from personavec.pipeline.demo import run_demo

    console.print(
        f"[bold]personavec demo[/]: extracting '{escape(trait)}' from {escape(model)} "
        "(offline; resumable)"
    )
    result = run_demo(trait, model=model, run_dir=out, coef=coef, overwrite=overwrite)
    extraction = result.extraction
    console.print(
        f"kept {extraction.kept_pairs} of {extraction.total_pairs} pairs; vector "
        f"{extraction.vector_path}; report {extraction.report_path}"
    )
    console.print(f"\n[bold cyan]question:[/] {escape(result.question)}", highlight=False)
    console.print("[bold]unsteered:[/]", end=" ")
    console.print(result.unsteered, markup=False, highlight=False)
    console.print(
        f"[bold red]steered towards {escape(trait)}[/] (layer {result.layer}, relative coef "
        f"+{result.coef:g}):",
        end=" ",
    )
    console.print(result.steered, markup=False, highlight=False)
    console.print(
        f"[bold green]steered away from {escape(trait)}[/] (coef -{result.coef:g}):", end=" "
    )
    console.print(result.suppressed, markup=False, highlight=False)
    report = extraction.report_path
    console.print(
        f"\nreport: {report} (plot: {report.parent / 'separation.png'}); try next: personavec "
        f'generate "How should I handle a rival?" --vector {extraction.vector_path} '
        f"--coef {result.coef:g} --relative --compare",
        markup=False,
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``extract`` and ``demo`` commands to ``app`` (calling it twice is harmless)."""
    registered = {info.name for info in app.registered_commands}
    for name, command in (("extract", extract_command), ("demo", demo_command)):
        if name not in registered:
            app.command(name)(command)

"""``personavec judge-check``: held-out AUROC and the cross-trait matrix of trait judges."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    JudgeConcurrencyOption,
    JudgeTimeoutOption,
    ModelOption,
    console,
    friendly_errors,
)


@friendly_errors
def judge_check_command(
    judge: Annotated[
        list[str] | None,
        typer.Option(
            "--judge",
            "-j",
            help="Judge to check (repeatable): contrast, contrast-plain, contrast-neutral, "
            "embedding, openai:MODEL. Default: contrast and embedding.",
        ),
    ] = None,
    trait: Annotated[
        list[str] | None,
        typer.Option("--trait", "-t", help="Trait (repeatable). Default: all shipped traits."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/judge-check"),
    per_side: Annotated[
        int | None, typer.Option(help="Use only the first N answers per trait and label.")
    ] = None,
    contrast_pairs: Annotated[
        int | None, typer.Option(help="Contrast judge: instruction pairs used (default all).")
    ] = None,
    judge_base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible URL (or OPENAI_BASE_URL).")
    ] = None,
    judge_api_key: Annotated[
        str | None, typer.Option(help="API key (or OPENAI_API_KEY); never saved.")
    ] = None,
    judge_timeout: JudgeTimeoutOption = None,
    judge_concurrency: JudgeConcurrencyOption = 8,
    model: ModelOption = "smollm2",
    overwrite: Annotated[bool, typer.Option(help="Start the run directory afresh.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Does each trait judge measure its trait? AUROC on labelled answers + cross-trait matrix."""
    from personavec.pipeline.judge_check import JudgeCheckConfig, judge_check

    config = JudgeCheckConfig(
        judges=tuple(judge or ("contrast", "embedding")),
        traits=tuple(trait) if trait else None,
        model=model,
        contrast_pairs=contrast_pairs,
        per_side=per_side,
        device=device,
        dtype=dtype,
    )
    access = {
        "base_url": judge_base_url,
        "api_key": judge_api_key,
        "timeout_s": judge_timeout,
        "concurrency": judge_concurrency,
    }
    result = judge_check(config, out, overwrite=overwrite, show_progress=not quiet, access=access)
    for name, summary in result.summaries.items():
        aurocs = [v for v in summary.auroc.values() if math.isfinite(v)]
        spec = [v for v in summary.specificity.values() if math.isfinite(v)]
        console.print(
            f"{name}: mean AUROC {sum(aurocs) / max(1, len(aurocs)):.2f}, "
            f"mean specificity {sum(spec) / max(1, len(spec)):.2f}",
            highlight=False,
        )
    console.print(f"report: {out / 'report.md'}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``judge-check`` command to ``app`` (calling it twice is harmless)."""
    if "judge-check" not in {info.name for info in app.registered_commands}:
        app.command("judge-check")(judge_check_command)

"""``personavec finetune``: LoRA finetuning, with its training options (``--prevent``,
``--ablate-during-training``, ``--projection-penalty``, ``--mode``, ``--positions``,
``--relative/--raw``) declared here and passed to
:func:`personavec.training.finetune.finetune` as ``extras``."""

from __future__ import annotations

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


def check_training_options(
    prevent: list[str],
    ablate: list[str],
    penalty: list[str],
    mode: str,
    positions: str,
    relative: bool | None,
) -> bool:
    """Fail on a malformed spec, a missing vector file or a steering option without
    ``--prevent``/``--ablate-during-training`` before any model loads; whether any is given."""
    from personavec.training.modifiers import parse_training_spec

    if not (prevent or ablate or penalty):
        if mode != "stack" or positions != "all" or relative:
            raise PersonavecError(
                "--mode, --positions and --relative need --prevent or --ablate-during-training"
            )
        return False
    for texts, flag, parts in (
        (prevent, "--prevent", 2),
        (ablate, "--ablate-during-training", 1),
        (penalty, "--projection-penalty", 2),
    ):
        for text in texts:
            spec = parse_training_spec(text, flag, max_parts=parts)
            if not spec.path.is_file():
                raise PersonavecError(f"{flag}: vector file not found: {spec.path}")
    return True


def _config(paper: bool, seed: int, save_steps: int, **chosen: Any) -> Any:
    from personavec.training.finetune import FinetuneConfig

    given = {k: v for k, v in chosen.items() if v is not None}
    if chosen.get("rank") is not None and chosen.get("alpha") is None:
        given["alpha"] = 2 * chosen["rank"]
    extra: dict[str, Any] = {"seed": seed, "save_steps": save_steps, **given}
    return FinetuneConfig.paper(**extra) if paper else FinetuneConfig(**extra)


@friendly_errors
def finetune_command(
    data: Annotated[Path, typer.Argument(help="Chat-format JSONL ({'messages': [...]} rows).")],
    out: Annotated[Path, typer.Option(help="Output directory (written atomically).")],
    model: ModelOption = "smollm2",
    paper: Annotated[
        bool, typer.Option(help="Paper settings: rsLoRA r32 α64, lr 1e-5, batch 16.")
    ] = False,
    rank: Annotated[int | None, typer.Option(help="LoRA rank (CPU default 16).")] = None,
    alpha: Annotated[int | None, typer.Option(help="LoRA alpha (default 2×rank).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (CPU default 2e-4).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Per-step batch (default 8).")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs (default 1).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimiser steps.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every N steps (resume).")] = 10,
    merge: Annotated[bool, typer.Option(help="Also save a merged plain checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a different finished finetune.")] = False,
    prevent: PreventOpt = None,
    mode: ModeOpt = "stack",
    positions: PositionsOpt = "all",
    relative: UnitOpt = None,
    ablate_during_training: AblateOpt = None,
    projection_penalty: PenaltyOpt = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """LoRA-finetune a model on a chat dataset (peft + TRL SFTTrainer; resumable)."""
    from personavec.core.models import load_model
    from personavec.training.chat_data import read_chat_dataset
    from personavec.training.finetune import finetune
    from personavec.training.finetune_dir import check_output
    from personavec.training.modifiers import build_modifiers

    rows = read_chat_dataset(data)
    config = _config(
        paper,
        seed,
        save_steps,
        rank=rank,
        alpha=alpha,
        learning_rate=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        epochs=epochs,
        max_steps=max_steps,
    )
    specs = (prevent or [], ablate_during_training or [], projection_penalty or [])
    modified = check_training_options(*specs, mode, positions, relative)
    check_output(out)
    loaded = load_model(model, device=device, dtype=dtype)
    extras = None
    if modified:
        mods = build_modifiers(
            loaded,
            prevent=specs[0],
            ablate=specs[1],
            penalty=specs[2],
            mode=mode,
            positions=positions,
            relative=relative,
        )
        err_console.print(f"training with {mods.describe()}", highlight=False)
        extras = mods.extras()
    result = finetune(
        loaded,
        rows,
        out,
        config,
        dataset_path=data,
        merge=merge,
        overwrite=overwrite,
        show_progress=not quiet,
        extras=extras,
    )
    metrics = result.record["metrics"]
    state = "reused" if result.reused else "trained"
    console.print(
        f"{state}: {metrics['steps']} steps, train loss {metrics['train_loss']:.4f}; "
        f"{'merged checkpoint + ' if result.merged else ''}adapter in {result.path}",
        highlight=False,
    )

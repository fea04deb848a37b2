"""LoRA finetuning through peft and TRL's ``SFTTrainer`` (``personavec finetune``).

Each row of a chat dataset becomes a conversational *prompt-completion* example (the turns
before the last assistant turn → prompt, that turn → completion), so TRL masks the labels of
every prompt token (``completion_only_loss``): the loss covers only the assistant's answer and
its end-of-turn token, for any chat template.

Output directory (``out``; :mod:`personavec.training.finetune_dir`), written to a temporary
directory and renamed into place at the end; a finished one holds the marker file ``COMPLETE``:

* ``adapter/`` — the LoRA adapter (peft format);
* with ``merge``: a plain merged checkpoint (``config.json``, weights, tokenizer) that
  :func:`personavec.core.models.load_model` and every command accept;
* ``personavec_finetune.json`` — base model (:func:`~personavec.training.finetuned.base_identity`),
  dataset hash, settings, ``training`` (the ``extras``' identity) and metrics: ``train_loss`` is
  the mean training loss over *all* steps, also those before a resume; ``losses`` the loss of
  each step.

Checkpoints live in ``.<out>.partial/`` next to it while training, a run directory opened
through the run primitive (locked; identity = base, settings, extras and rows): a killed run
resumes from the latest one (same seed → the same final adapter as an uninterrupted run); the
leftover of a run with other settings is refused unless ``overwrite``. A loss, gradient norm
or trained weight that is not finite stops the finetune with :class:`NonFiniteLoss`; it is never
marked complete. Training runs on a copy of the base; the copy and the trainer are freed (and
the CUDA cache emptied) when :func:`finetune` returns or raises.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from personavec.core.models import LoadedModel, load_model, prepare_tokenizer
from personavec.core.steering import NonFiniteSteering
from personavec.errors import PersonavecError
from personavec.training.chat_data import ChatRow, check_fits_template, dataset_hash
from personavec.training.finetune_config import (
    FinetuneConfig,
    FinetuneError,
    NonFiniteLoss,
    TrainerExtras,
)
from personavec.training.finetune_dir import (
    MARKER,
    RECORD,
    FinetuneResult,
    check_output,
    open_work,
    publish,
    reuse,
    work_dir,
)
from personavec.training.finetuned import base_identity
from personavec.training.nonfinite import StopOnNonFinite, check_finite_weights
from personavec.training.progress_callback import LossProgress

__all__ = [
    "MARKER",
    "RECORD",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "NonFiniteLoss",
    "TrainerExtras",
    "build_trainer",
    "finetune",
]


def _to_dataset(rows: Sequence[ChatRow]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": r.prompt, "completion": [{"role": "assistant", "content": r.completion}]}
            for r in rows
        ]
    )


def _sft_config(
    loaded: LoadedModel, config: FinetuneConfig, output_dir: str | Path, extras: TrainerExtras
) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,
        max_length=config.max_length,
        completion_only_loss=True,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        use_cpu=loaded.device.type == "cpu",
        bf16=loaded.model.dtype == torch.bfloat16,
        dataloader_num_workers=0,
        **{
            # TRL checkpoints activations by default: memory for ~20 % more compute. On a CPU
            # memory is rarely the limit, so recompute nothing there (bench_finetune.py).
            "activation_checkpointing": loaded.device.type != "cpu",
            **dict(extras.args),
        },
    )


def build_trainer(
    loaded: LoadedModel,
    rows: Sequence[ChatRow],
    config: FinetuneConfig,
    output_dir: str | Path,
    *,
    show_progress: bool = False,
    callbacks: Sequence[Any] = (),
    extras: TrainerExtras | None = None,
) -> Any:
    """A :class:`~personavec.training.sft_trainer.PersonaSFTTrainer` (or
    ``extras.trainer_class``) training a LoRA adapter on a *copy* of ``loaded.model``; it stops
    on a non-finite loss or gradient norm (:class:`.nonfinite.StopOnNonFinite`)."""
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback

    from personavec.training.sft_trainer import PersonaSFTTrainer

    extras = extras or TrainerExtras()
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        use_rslora=config.rslora,
        lora_dropout=config.dropout,
        target_modules=(
            config.target_modules
            if isinstance(config.target_modules, str)
            else list(config.target_modules)
        ),
        task_type="CAUSAL_LM",
    )
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.padding_side = "right"
    model = copy.deepcopy(loaded.model)
    model.train()
    progress = [LossProgress()] if show_progress else []
    trainer_class = extras.trainer_class or PersonaSFTTrainer
    trainer = trainer_class(
        model=model,
        args=_sft_config(loaded, config, output_dir, extras),
        train_dataset=_to_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[*progress, StopOnNonFinite(), *callbacks, *extras.callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # losses go to the progress bar and the record
    return trainer


def finetune(
    base: LoadedModel | str,
    rows: Sequence[ChatRow],
    out: str | Path,
    config: FinetuneConfig | None = None,
    *,
    dataset_path: str | Path | None = None,
    merge: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    callbacks: Sequence[Any] = (),
    extras: TrainerExtras | None = None,
) -> FinetuneResult:
    """Train a LoRA adapter on ``rows``; write ``out`` (see the module docstring).

    ``base`` is left untouched (training runs on a copy, freed before this returns). A finished
    ``out`` with the same base, data, settings and ``extras`` is reused; a different one is an
    error unless ``overwrite``; ``out`` must not be anything but a finetune
    (:func:`~personavec.training.finetune_dir.check_output`). ``callbacks`` are extra
    ``transformers.TrainerCallback`` objects; ``extras`` changes how training runs (e.g.
    :meth:`personavec.training.modifiers.TrainingModifiers.extras` for ``--prevent``).
    """
    config = config or FinetuneConfig()
    target = check_output(out)
    loaded = load_model(base) if isinstance(base, str) else base
    rows = list(rows)
    if not rows:
        raise FinetuneError("the dataset holds no examples; pass a non-empty dataset")
    check_fits_template(loaded.tokenizer, rows)
    identity = _identity(loaded, rows, config, dataset_path, merge)
    if extras is not None and extras.identity:
        identity["training"] = dict(extras.identity)
    existing = reuse(target, identity, overwrite)
    if existing is not None:
        return existing
    try:
        with open_work(target, identity, overwrite) as work:
            record = _train(
                loaded,
                rows,
                config,
                work,
                target,
                identity,
                merge,
                show_progress,
                callbacks,
                extras,
            )
    except PersonavecError as exc:  # drop the frames that hold the trainer
        exc.__context__ = exc.__cause__ = None
        raise exc.with_traceback(None) from None
    finally:
        _free_memory()
    shutil.rmtree(work_dir(target), ignore_errors=True)
    return FinetuneResult(target, record)


def _train(
    loaded: LoadedModel,
    rows: list[ChatRow],
    config: FinetuneConfig,
    work: Path,
    target: Path,
    identity: dict[str, Any],
    merge: bool,
    show_progress: bool,
    callbacks: Sequence[Any],
    extras: TrainerExtras | None,
) -> dict[str, Any]:
    """Train (resuming from the latest checkpoint in ``work``), check, publish; the record."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = work / "checkpoints"
    trainer = build_trainer(
        loaded,
        rows,
        config,
        checkpoints,
        show_progress=show_progress,
        callbacks=callbacks,
        extras=extras,
    )
    start = time.perf_counter()
    last = get_last_checkpoint(str(checkpoints))
    try:
        output = trainer.train(resume_from_checkpoint=last)
    except NonFiniteSteering as exc:  # steering during training made the activations NaN/inf
        good = get_last_checkpoint(str(checkpoints))
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint was saved yet"
        raise NonFiniteLoss(f"{exc}; {kept}") from None
    check_finite_weights(trainer.model)
    metrics = _metrics(trainer.state.log_history, int(output.global_step))
    metrics.update(
        seconds_this_session=time.perf_counter() - start,
        resumed_from=Path(last).name if last else None,
    )
    record = {**identity, "metrics": metrics, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    model, tokenizer = trainer.model, loaded.tokenizer
    publish(target, record, lambda folder: _write_weights(folder, model, tokenizer, merge))
    return record


def _metrics(history: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """``train_loss`` (mean of every step's loss, before and after a resume), ``steps`` and
    the per-step ``losses``; a non-finite mean is refused."""
    losses = [float(h["loss"]) for h in history if "loss" in h]
    if not losses:
        raise NonFiniteLoss("training logged no loss; rerun the finetune")
    train_loss = sum(losses) / len(losses)
    if not torch.isfinite(torch.tensor(train_loss)):
        raise NonFiniteLoss(f"the mean training loss is {train_loss}; lower the learning rate")
    return {"train_loss": train_loss, "steps": steps, "losses": losses}


def _write_weights(folder: Path, model: Any, tokenizer: Any, merge: bool) -> None:
    model.save_pretrained(folder / "adapter")
    if merge:
        merged = model.merge_and_unload()
        merged.eval()
        merged.save_pretrained(folder)
        prepare_tokenizer(copy.deepcopy(tokenizer)).save_pretrained(folder)


def _free_memory() -> None:
    """Collect the trainer and its model copy now (they hold reference cycles), and hand
    CUDA's cached blocks back."""
    gc.collect()
    if torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.empty_cache()


def _identity(
    loaded: LoadedModel,
    rows: Sequence[ChatRow],
    config: FinetuneConfig,
    dataset_path: str | Path | None,
    merge: bool,
) -> dict[str, Any]:
    text = json.dumps([r.messages() for r in rows], ensure_ascii=False).encode()
    return {
        "kind": "personavec-finetune",
        "base": base_identity(loaded),
        "dataset": {
            "path": str(dataset_path) if dataset_path else None,
            "file_sha256": dataset_hash(dataset_path) if dataset_path else None,
            "rows_sha256": hashlib.sha256(text).hexdigest()[:16],
            "rows": len(rows),
        },
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "merged": merge,
    }

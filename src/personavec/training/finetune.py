"""LoRA finetuning through peft and TRL's ``SFTTrainer`` (``personavec finetune``).

Each row of a chat dataset becomes a conversational *prompt-completion* example (the turns
before the last assistant turn → prompt, that turn → completion), so TRL masks the labels of
every prompt token (``completion_only_loss``): the loss covers only the assistant's answer and
its end-of-turn token, for any chat template.

Output directory (``out``), written to a temporary directory and renamed into place at the end;
a finished one holds the marker file ``COMPLETE``:

* ``adapter/`` — the LoRA adapter (peft format);
* with ``merge``: a plain merged checkpoint (``config.json``, weights, tokenizer) that
  :func:`personavec.core.models.load_model` and every command accept;
* ``personavec_finetune.json`` — base model, dataset hash, settings and training metrics.

Checkpoints live in ``.<out>.partial/`` next to it while training; a killed run resumes from the
latest one (same seed → the same final adapter as an uninterrupted run).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from personavec.core.models import LoadedModel, load_model, prepare_tokenizer
from personavec.core.steering import NonFiniteSteering
from personavec.core.vector import config_fingerprint
from personavec.errors import PersonavecError
from personavec.store import atomic_write_json
from personavec.training.chat_data import ChatRow, check_fits_template, dataset_hash
from personavec.training.progress_callback import LossProgress

RECORD = "personavec_finetune.json"
MARKER = "COMPLETE"


class FinetuneError(PersonavecError):
    """A finetune cannot start, or a finetuned directory is unusable."""


class NonFiniteLoss(FinetuneError):
    """The training loss, a gradient norm or steered activations became NaN or infinite."""


@dataclass(frozen=True)
class FinetuneConfig:
    """LoRA and optimisation settings.

    The defaults are sized for a ~100M-parameter model on a laptop CPU (a few hundred examples
    in minutes): rank-stabilised LoRA r 16, α 32 on every linear layer, lr 2e-4, batch 8, one
    epoch. :meth:`paper` gives the paper's settings (r 32, α 64, lr 1e-5, effective batch 16).
    """

    rank: int = 16
    alpha: int = 32
    rslora: bool = True
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    learning_rate: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run ``epochs``)."""
    max_length: int = 512
    warmup_ratio: float = 0.0
    """Fraction of steps (< 1) or number of steps (>= 1) of linear warmup."""
    seed: int = 0
    save_steps: int = 10

    @classmethod
    def paper(cls, **overrides: Any) -> FinetuneConfig:
        """Chen et al.'s settings: rsLoRA r 32, α 64, lr 1e-5, effective batch 16, 1 epoch."""
        base = cls(rank=32, alpha=64, learning_rate=1e-5, batch_size=2, grad_accum=8)
        return replace(base, **overrides)

    def __post_init__(self) -> None:
        if self.rank < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.save_steps < 1:
            raise FinetuneError("rank, batch size, grad accumulation and save steps must be >= 1")
        if not self.learning_rate > 0 or not self.epochs > 0:
            raise FinetuneError("learning rate and epochs must be positive")


@dataclass(frozen=True)
class TrainerExtras:
    """Hook point for changes to how training runs (e.g. preventative steering).

    Attributes:
        callbacks: extra ``transformers.TrainerCallback`` objects.
        trainer_class: a :class:`~personavec.training.sft_trainer.PersonaSFTTrainer` subclass to
            build instead of it.
        args: ``SFTConfig`` fields to override.
        identity: JSON-able description recorded under ``"training"`` in the run record; finished
            finetunes are reused only when it matches.
    """

    callbacks: tuple[Any, ...] = ()
    trainer_class: type | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    identity: Mapping[str, Any] = field(default_factory=dict)


ExtrasFactory = Callable[[LoadedModel], TrainerExtras]
_EXTRAS_FACTORY: ContextVar[ExtrasFactory | None] = ContextVar("finetune_extras", default=None)


@contextlib.contextmanager
def extras_for_finetunes(factory: ExtrasFactory) -> Iterator[None]:
    """Inside this block, :func:`finetune` calls given no ``extras`` use ``factory(base)``.

    How command-line options that change training (``--prevent`` …) reach ``personavec
    finetune`` without that command knowing them.
    """
    token = _EXTRAS_FACTORY.set(factory)
    try:
        yield
    finally:
        _EXTRAS_FACTORY.reset(token)


@dataclass
class FinetuneResult:
    """A finished finetune directory and its record."""

    path: Path
    record: dict[str, Any]
    reused: bool = False

    @property
    def merged(self) -> bool:
        return bool(self.record.get("merged"))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 (16 hex) of the input-embedding weights: names a base model's weights (LoRA
    leaves embeddings untouched, so a finetune keeps its base's digest)."""
    weight = model.get_input_embeddings().weight  # type: ignore[operator]
    data = weight.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def base_identity(loaded: LoadedModel) -> dict[str, Any]:
    return {
        "spec": loaded.spec,
        "model_id": loaded.model_id,
        "fingerprint": config_fingerprint(loaded.model.config),
        "weights": weights_digest(loaded.model),
        "n_layers": loaded.n_layers,
    }


def _to_dataset(rows: Sequence[ChatRow]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": r.prompt, "completion": [{"role": "assistant", "content": r.completion}]}
            for r in rows
        ]
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
    ``extras.trainer_class``) training a LoRA adapter on a *copy* of ``loaded.model``."""
    from peft import LoraConfig
    from trl import SFTConfig

    from personavec.training.sft_trainer import PersonaSFTTrainer

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
    args = SFTConfig(
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
            **dict(extras.args if extras else {}),
        },
    )
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.padding_side = "right"
    model = copy.deepcopy(loaded.model)
    model.train()
    progress = [LossProgress()] if show_progress else []
    from transformers.trainer_callback import PrinterCallback

    trainer_class = extras.trainer_class if extras and extras.trainer_class else PersonaSFTTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=_to_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[*progress, *callbacks, *(extras.callbacks if extras else ())],
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

    ``base`` is left untouched (training runs on a copy). A finished ``out`` with the same base,
    data and settings is reused; a different one is an error unless ``overwrite``. ``callbacks``
    are extra ``transformers.TrainerCallback`` objects; ``extras`` changes how training runs.
    """
    config = config or FinetuneConfig()
    loaded = load_model(base) if isinstance(base, str) else base
    rows = list(rows)
    if not rows:
        raise FinetuneError("the dataset holds no examples; pass a non-empty dataset")
    check_fits_template(loaded.tokenizer, rows)
    factory = _EXTRAS_FACTORY.get()
    if extras is None and factory is not None:
        extras = factory(loaded)
    target = Path(out)
    identity = _identity(loaded, rows, config, dataset_path, merge)
    if extras is not None and extras.identity:
        identity["training"] = dict(extras.identity)
    existing = _reuse(target, identity, overwrite)
    if existing is not None:
        return existing
    work = target.parent / f".{target.name}.partial"
    _prepare_work(work, identity)
    trainer = build_trainer(
        loaded,
        rows,
        config,
        work / "checkpoints",
        show_progress=show_progress,
        callbacks=callbacks,
        extras=extras,
    )
    from transformers.trainer_utils import get_last_checkpoint

    start = time.perf_counter()
    last = get_last_checkpoint(str(work / "checkpoints"))
    try:
        output = trainer.train(resume_from_checkpoint=last)
    except NonFiniteSteering as exc:  # steering during training made the activations NaN/inf
        good = get_last_checkpoint(str(work / "checkpoints"))
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint was saved yet"
        raise NonFiniteLoss(f"{exc}; {kept}") from None
    metrics = {
        "train_loss": float(output.training_loss),
        "steps": int(output.global_step),
        "seconds_this_session": time.perf_counter() - start,
        "resumed_from": Path(last).name if last else None,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    }
    record = {**identity, "metrics": metrics, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _save(trainer, loaded, target, record, merge, overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return FinetuneResult(target, record)


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


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("base", "config", "merged", "training")
    return all(a.get(k) == b.get(k) for k in keys) and (
        a["dataset"]["rows_sha256"] == b["dataset"]["rows_sha256"]
    )


def _reuse(target: Path, identity: dict[str, Any], overwrite: bool) -> FinetuneResult | None:
    if not target.exists():
        return None
    if not (target / MARKER).is_file() or not (target / RECORD).is_file():
        if overwrite:
            return None
        raise FinetuneError(f"{target} exists and is not a finished finetune; pass another --out")
    record = json.loads((target / RECORD).read_text())
    if _same_run(record, identity) and not overwrite:
        return FinetuneResult(target, record, reused=True)
    if not overwrite:
        raise FinetuneError(
            f"{target} holds a finetune with other base, data or settings; pass another --out "
            "or --overwrite"
        )
    return None


def _prepare_work(work: Path, identity: dict[str, Any]) -> None:
    """Keep checkpoints of an interrupted run of the same finetune; clear anything else."""
    saved = work / "identity.json"
    if work.exists() and not (
        saved.is_file() and _same_run(json.loads(saved.read_text()), identity)
    ):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, identity)


def _save(
    trainer: Any,
    loaded: LoadedModel,
    target: Path,
    record: dict[str, Any],
    merge: bool,
    overwrite: bool,
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model = trainer.model
        model.save_pretrained(tmp / "adapter")
        if merge:
            merged = model.merge_and_unload()
            merged.eval()
            merged.save_pretrained(tmp)
            prepare_tokenizer(copy.deepcopy(loaded.tokenizer)).save_pretrained(tmp)
        atomic_write_json(tmp / RECORD, record)
        (tmp / MARKER).write_text("complete\n")
        if target.exists() and overwrite:
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

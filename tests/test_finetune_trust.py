"""Finetunes you can trust (issue 17): explicit training options, memory freed, loading like the
base, weight identity, bad settings refused, finished work never lost, modes follow the umask."""

from __future__ import annotations

import gc
import json
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

import personavec.training.finetune as finetune_module
from personavec.core.models import load_model
from personavec.errors import PersonavecError
from personavec.runs.identity import weights_sha256
from personavec.training.finetune import (
    MARKER,
    FinetuneConfig,
    FinetuneError,
    NonFiniteLoss,
    finetune,
)
from personavec.training.finetuned import check_base, load_finetuned
from personavec.training.modifiers import build_modifiers
from test_finetune import CONFIG, ROWS
from test_prevention import make_vector
from tiny_models import tiny_model


class _WatchModel(TrainerCallback):
    """Keeps only a weak reference to the model the trainer trains."""

    def __init__(self) -> None:
        self.ref: weakref.ref[Any] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.ref = weakref.ref(kw["model"])


class _PoisonLastStep(TrainerCallback):
    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == state.max_steps:
            with torch.no_grad():
                for name, p in kw["model"].named_parameters():
                    if "lora_B" in name:
                        p.fill_(float("nan"))


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Only explicit collections run: a reference cycle stays until someone collects it."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_no_hidden_channel_for_training_options() -> None:
    from personavec.cli.finetune import finetune_command

    assert not hasattr(finetune_module, "extras_for_finetunes")
    assert not hasattr(finetune_module, "_EXTRAS_FACTORY")
    options = finetune_command.__wrapped__.__code__.co_varnames  # type: ignore[attr-defined]
    for name in ("prevent", "ablate_during_training", "projection_penalty", "mode", "positions"):
        assert name in options


def test_trainer_and_model_copy_are_freed_when_finetune_returns(
    tmp_path: Path, no_automatic_gc: None
) -> None:
    loaded = tiny_model("llama")
    path = make_vector(loaded, tmp_path / "v.safetensors")
    extras = build_modifiers(loaded, prevent=[f"{path}:2:2"], penalty=[f"{path}:2:1"]).extras()
    watch = _WatchModel()
    result = finetune(
        loaded, ROWS, tmp_path / "ft", CONFIG, merge=True, show_progress=False,
        extras=extras, callbacks=[watch],
    )  # fmt: skip
    assert result.record["metrics"]["steps"] == 4
    assert watch.ref is not None and watch.ref() is None  # no collection by the test


def test_non_finite_weights_are_never_marked_complete_and_are_freed(
    tmp_path: Path, no_automatic_gc: None
) -> None:
    loaded = tiny_model("llama")
    watch = _WatchModel()
    with pytest.raises(NonFiniteLoss, match="not finite") as caught:
        finetune(
            loaded, ROWS, tmp_path / "ft", CONFIG, show_progress=False,
            callbacks=[watch, _PoisonLastStep()],
        )  # fmt: skip
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "ft").exists()
    assert watch.ref is not None and watch.ref() is None


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"learning_rate": float("inf")}, "--lr must be a finite number > 0"),
        ({"learning_rate": float("nan")}, "--lr must be a finite number > 0"),
        ({"learning_rate": 0.0}, "--lr must be a finite number > 0"),
        ({"learning_rate": -1e-4}, "--lr must be a finite number > 0"),
        ({"epochs": float("inf")}, "--epochs must be a finite number > 0"),
        ({"max_steps": 0}, "--max-steps must be at least 1"),
        ({"max_steps": -3}, "--max-steps must be at least 1"),
        ({"alpha": -8}, "--alpha must be at least 1"),
        ({"rank": 0}, "--rank must be at least 1"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_settings_are_refused(setting: dict[str, Any], message: str) -> None:
    with pytest.raises(FinetuneError, match=message):
        FinetuneConfig(**setting)


def test_train_loss_after_a_resume_is_the_mean_over_all_steps(tmp_path: Path) -> None:
    from test_finetune import _Kill

    loaded = tiny_model("llama")
    straight = finetune(loaded, ROWS, tmp_path / "straight", CONFIG, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        finetune(
            loaded, ROWS, tmp_path / "killed", CONFIG, show_progress=False, callbacks=[_Kill()]
        )
    resumed = finetune(loaded, ROWS, tmp_path / "killed", CONFIG, show_progress=False)
    a, b = straight.record["metrics"], resumed.record["metrics"]
    assert b["resumed_from"] == "checkpoint-2" and len(b["losses"]) == 4
    assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
    assert a["train_loss"] == pytest.approx(sum(a["losses"]) / 4)


def test_out_that_is_not_a_finetune_is_refused_before_training(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    note = tmp_path / "notes.txt"
    note.write_text("mine\n")
    for out in (note, note / "sub"):
        for overwrite in (False, True):
            with pytest.raises(FinetuneError, match="is a file"):
                finetune(loaded, ROWS, out, CONFIG, show_progress=False, overwrite=overwrite)
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(FinetuneError, match="not a finished finetune"):
        finetune(loaded, ROWS, other, CONFIG, show_progress=False, overwrite=True)
    assert note.read_text() == "mine\n" and (other / "thesis.tex").is_file()
    assert not list(tmp_path.glob(".*"))  # no checkpoints: nothing was trained


def test_overwrite_replaces_only_a_finetune(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    first = finetune(loaded, ROWS, tmp_path / "ft", CONFIG, show_progress=False)
    other = FinetuneConfig(rank=4, alpha=8, learning_rate=1e-3, batch_size=2, max_steps=2)
    with pytest.raises(FinetuneError, match="other base, data or settings"):
        finetune(loaded, ROWS, tmp_path / "ft", other, show_progress=False)
    second = finetune(loaded, ROWS, tmp_path / "ft", other, show_progress=False, overwrite=True)
    assert second.record["metrics"]["steps"] == 2 != first.record["metrics"]["steps"]
    assert (tmp_path / "ft" / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    old = os.umask(0o027)
    try:
        finetune(loaded, ROWS, tmp_path / "ft", CONFIG, merge=True, show_progress=False)
    finally:
        os.umask(old)
    modes = {
        p.relative_to(tmp_path): p.stat().st_mode & 0o777
        for p in [tmp_path / "ft", *(tmp_path / "ft").rglob("*")]
    }
    assert any(str(p).endswith(".safetensors") for p in modes)
    for path, mode in modes.items():
        expected = 0o750 if (tmp_path / path).is_dir() else 0o640
        assert mode == expected, (path, oct(mode))


def test_the_base_identity_is_the_full_weight_hash(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    result = finetune(loaded, ROWS, tmp_path / "ft", CONFIG, merge=True, show_progress=False)
    base = result.record["base"]
    assert base["weights_sha256"] == weights_sha256(loaded.model)
    assert base["dtype"] == "float32"
    merged = load_model(str(tmp_path / "ft"))  # same embeddings, other weights
    assert weights_sha256(merged.model) != base["weights_sha256"]
    with pytest.raises(PersonavecError, match="finetuned from"):
        check_base(merged, tmp_path / "ft")
    check_base(loaded, tmp_path / "ft")


@pytest.mark.parametrize("merge", [True, False])
def test_finetunes_load_like_the_base(tmp_path: Path, merge: bool) -> None:
    loaded = tiny_model("llama")
    finetune(loaded, ROWS, tmp_path / "ft", CONFIG, merge=merge, show_progress=False)
    wide = tiny_model("llama")
    wide.model.double()  # "the user's --dtype": another precision than the default
    tuned = load_finetuned(tmp_path / "ft", like=wide)
    assert next(tuned.model.parameters()).dtype == torch.float64
    assert tuned.device == wide.device
    assert next(wide.model.parameters()).dtype == torch.float64  # like is not modified
    plain = load_finetuned(tmp_path / "ft", like=loaded)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(
        tuned.model(ids).logits.float(), plain.model(ids).logits, rtol=1e-4, atol=1e-4
    )
    with pytest.raises(PersonavecError, match="finetuned from"):
        load_finetuned(tmp_path / "ft", like=tiny_model("llama", seed=1))


def test_checkpoints_are_a_locked_run_directory(tmp_path: Path) -> None:
    from personavec.runs.lock import RunLockedError, run_lock
    from test_finetune import _Kill

    loaded = tiny_model("llama")
    with pytest.raises(KeyboardInterrupt):
        finetune(loaded, ROWS, tmp_path / "ft", CONFIG, show_progress=False, callbacks=[_Kill()])
    work = tmp_path / ".ft.partial"
    assert json.loads((work / "config.json").read_text())["config"]["learning_rate"] == 5e-3
    with run_lock(work), pytest.raises(RunLockedError, match="another personavec process"):
        finetune(loaded, ROWS, tmp_path / "ft", CONFIG, show_progress=False)
    other = FinetuneConfig(rank=4, alpha=8, learning_rate=1e-3, batch_size=2, max_steps=4)
    with pytest.raises(PersonavecError, match=r"different config.*--overwrite"):
        finetune(loaded, ROWS, tmp_path / "ft", other, show_progress=False)
    assert (work / "checkpoints" / "checkpoint-2").is_dir()  # kept for a resume
    result = finetune(loaded, ROWS, tmp_path / "ft", other, show_progress=False, overwrite=True)
    assert result.record["metrics"]["resumed_from"] is None and not work.exists()

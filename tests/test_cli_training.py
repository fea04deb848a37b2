"""Bad input on the training commands: one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import personavec.cli.training as training_cli
from personavec.cli.app import app
from personavec.core.models import load_model
from personavec.training.finetune import finetune
from test_finetune import CONFIG, ROWS
from test_prevention import make_vector
from tiny_models import tiny_model

main_app = app

runner = CliRunner()


def _fails(args: list[str], match: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert match in result.output
    assert "Traceback" not in result.output


def test_finetune_rejects_bad_datasets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _fails(["finetune", str(empty), "--out", str(tmp_path / "ft")], "no examples")
    user_only = tmp_path / "user.jsonl"
    user_only.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    _fails(["finetune", str(user_only), "--out", str(tmp_path / "ft")], "no assistant turn")
    _fails(
        ["finetune", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "ft")], "not found"
    )
    assert not (tmp_path / "ft").exists()


def test_shift_rejects_unfinished_finetune(tmp_path: Path) -> None:
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    _fails(
        ["shift", "--finetuned", str(half), "--vector", str(tmp_path / "v.safetensors")],
        "not a finished personavec finetune",
    )
    assert not (half / "shift.json").exists()


def test_dataset_build_rejects_bad_level(tmp_path: Path) -> None:
    _fails(
        [
            "dataset",
            "build",
            "--trait",
            "evil",
            "--level",
            "extreme",
            "--out",
            str(tmp_path / "d.jsonl"),
        ],
        "unknown level",
    )
    assert not (tmp_path / "d.jsonl").exists()


def _one_line_error(args: list[str], match: str, app: typer.Typer | None = None) -> None:
    result = runner.invoke(app or main_app, args)
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert match in text and "Traceback" not in text and len(text.splitlines()) <= 2, text


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved tiny model, a finished finetune of it, a vector and a chat dataset."""
    root = tmp_path_factory.mktemp("cli-training")
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(root / "model")
    tiny.tokenizer.save_pretrained(root / "model")
    loaded = load_model(str(root / "model"))
    vector = make_vector(loaded, root / "v.safetensors", trait="evil")
    finetune(loaded, ROWS, root / "ft", CONFIG, show_progress=False)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": r.messages()}) + "\n" for r in ROWS))
    return {
        "root": root,
        "model": root / "model",
        "vector": vector,
        "ft": root / "ft",
        "data": data,
    }


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--lr", "inf"], "--lr must be a finite number > 0"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
        (["--alpha", "-8"], "--alpha must be at least 1"),
    ],
)
def test_finetune_refuses_bad_settings_before_loading(
    tmp_path: Path, extra: list[str], match: str
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": ROWS[0].messages()}) + "\n")
    _one_line_error(["finetune", str(data), "--out", str(tmp_path / "ft"), *extra], match)
    assert not (tmp_path / "ft").exists()


def test_finetune_out_that_is_a_file_is_refused_before_training(
    tiny_run: dict[str, Path], tmp_path: Path
) -> None:
    note = tmp_path / "note.txt"
    note.write_text("mine")
    base = ["finetune", str(tiny_run["data"]), "--model", str(tiny_run["model"]), "--quiet"]
    _one_line_error([*base, "--out", str(note), "--overwrite"], "is a file")
    _one_line_error([*base, "--out", str(note / "sub")], "is a file")
    assert note.read_text() == "mine" and sorted(tmp_path.iterdir()) == [note]


def test_finetune_declares_the_training_options_itself(tiny_run: dict[str, Path]) -> None:
    app = typer.Typer()
    training_cli.register(app)  # the prevent-study commands are not registered
    out = tiny_run["root"] / "prevented"
    args = ["finetune", str(tiny_run["data"]), "--out", str(out), "--model", str(tiny_run["model"])]
    args += ["--max-steps", "2", "--rank", "4", "--quiet", "--prevent", f"{tiny_run['vector']}:2:3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "personavec_finetune.json").read_text())
    assert record["training"]["prevent"][0]["coef"] == 3.0


def test_shift_refuses_bad_questions_and_outputs_before_any_work(
    tiny_run: dict[str, Path], tmp_path: Path
) -> None:
    base = ["shift", "--finetuned", str(tiny_run["ft"]), "--vector", str(tiny_run["vector"])]
    base += ["--base", str(tiny_run["model"])]
    for n in ("0", "-2"):
        _one_line_error([*base, "--questions", n], "--questions must be at least 1")
    _one_line_error([*base, "--out", str(tmp_path)], "is a directory")
    note = tmp_path / "note.json"
    note.write_text("{}")
    _one_line_error([*base, "--out", str(note)], "exists; pass --overwrite")
    assert note.read_text() == "{}"
    for _ in range(2):  # its own report is replaced without --overwrite
        result = runner.invoke(main_app, [*base, "--questions", "2"])
        assert result.exit_code == 0, result.output
    report = json.loads((tiny_run["ft"] / "shift.json").read_text())
    assert report["shifts"][0]["n_prompts"] == 2
    result = runner.invoke(main_app, [*base, "--questions", "2", "--out", str(note), "--overwrite"])
    assert result.exit_code == 0 and "shifts" in json.loads(note.read_text())


def test_shift_of_a_non_finite_finetune_is_refused(
    tiny_run: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run["ft"], broken)
    (broken / "shift.json").unlink(missing_ok=True)
    weights = broken / "adapter" / "adapter_model.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, weights)
    args = ["shift", "--finetuned", str(broken), "--vector", str(tiny_run["vector"])]
    _one_line_error([*args, "--base", str(tiny_run["model"]), "--questions", "2"], "not finite")
    assert not (broken / "shift.json").exists()


def test_dataset_build_checks_out_before_any_work(tmp_path: Path) -> None:
    base = ["dataset", "build", "--trait", "evil", "--model", str(tmp_path / "no-model")]
    _one_line_error([*base, "--out", str(tmp_path)], "is a directory")
    existing = tmp_path / "d.jsonl"
    existing.write_text("keep me\n")
    _one_line_error([*base, "--out", str(existing)], "exists; pass --overwrite")
    assert existing.read_text() == "keep me\n"

"""Bad input on the training commands: one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from personavec.cli.app import app

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

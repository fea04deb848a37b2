"""``personavec finetune --prevent …`` and ``personavec prevent-study`` on a tiny saved model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from personavec.cli import training as training_cli
from personavec.cli.prevent import register as register_prevent
from personavec.core.models import load_model
from test_prevention import make_vector
from tiny_models import tiny_model

Setup = tuple[typer.Typer, Path, Path, Path]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[typer.Typer, Path, Path, Path]:
    root = tmp_path_factory.mktemp("prevent-cli")
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(root / "model")
    tiny.tokenizer.save_pretrained(root / "model")
    loaded = load_model(str(root / "model"))
    vector = make_vector(loaded, root / "v.safetensors", trait="evil")
    data = root / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Question {i}?"},
                        {"role": "assistant", "content": f"Answer {i} is cruel."},
                    ]
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    app = typer.Typer()
    training_cli.register(app)
    register_prevent(app)
    return app, root, vector, data


def _finetune(app: typer.Typer, root: Path, data: Path, out: Path, *extra: str) -> object:
    args = [
        "finetune",
        str(data),
        "--out",
        str(out),
        "--model",
        str(root / "model"),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--rank",
        "4",
        "--quiet",
        *extra,
    ]
    return CliRunner().invoke(app, args)


def test_finetune_with_prevent_records_the_steering(setup: Setup) -> None:
    app, root, vector, data = setup
    result = _finetune(
        app, root, data, root / "ft", "--prevent", f"{vector}:2:3", "--positions", "response"
    )
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    record = json.loads((root / "ft" / "personavec_finetune.json").read_text())
    (steering,) = record["training"]["prevent"]
    assert steering["layers"] == [2] and steering["coef"] == 3.0
    assert steering["positions"] == "response" and record["metrics"]["steps"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prevent", "{v}:7:3"], "out of range"),
        (["--prevent", "{v}:2:3", "--ablate-during-training", "{v}:2"], "pick one"),
        (["--prevent", "{v}:2:3", "--mode", "incremental"], "several layers"),
        (["--mode", "incremental"], "need --prevent"),
        (["--projection-penalty", "{v}:2"], "FILE:layer:lambda"),
        (["--prevent", "missing.safetensors:2:1"], "not found"),
    ],
)
def test_bad_flags_fail_in_one_line_and_write_nothing(
    setup: Setup,
    extra: list[str],
    message: str,
) -> None:
    app, root, vector, data = setup
    out = root / "bad"
    result = _finetune(app, root, data, out, *[e.replace("{v}", str(vector)) for e in extra])
    assert result.exit_code == 2  # type: ignore[attr-defined]
    text = result.output.strip()  # type: ignore[attr-defined]
    assert message in text and "error:" in text and len(text.splitlines()) <= 2
    assert not out.exists() and not (root / ".bad.partial").exists()


def _study(app: typer.Typer, *args: str) -> object:
    return CliRunner().invoke(app, ["prevent-study", *args])


def test_prevent_study_reads_a_config_file_and_the_command_line_wins(
    setup: Setup,
    tmp_path: Path,
) -> None:
    app, root, vector, data = setup
    config = tmp_path / "study.json"

    def run(settings: dict[str, object], *args: str) -> str:
        config.write_text(json.dumps(settings))
        result = _study(app, "--config", str(config), *args)
        assert result.exit_code == 2  # type: ignore[attr-defined]
        text = str(result.output).strip()  # type: ignore[attr-defined]
        assert len(text.splitlines()) <= 2
        return text

    base = {"vector": str(vector), "out": str(tmp_path / "run"), "model": str(root / "model")}
    missing = tmp_path / "missing.jsonl"
    assert "missing.jsonl" in run({**base, "dataset": str(missing)})  # the file's dataset
    other = tmp_path / "other.jsonl"
    assert "other.jsonl" in run({**base, "dataset": str(missing)}, "--dataset", str(other))
    assert "--coefs" in run({**base, "dataset": str(data), "coefs": [1, "x"]})  # list → 1,x
    assert "unknown option 'coef'" in run({**base, "coef": 1})
    assert "needs --dataset" in run({"vector": str(vector)})
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("lr", ["0", "-1e-4", "nan", "inf"])
def test_prevent_study_refuses_a_learning_rate_that_is_not_positive(
    setup: Setup,
    tmp_path: Path,
    lr: str,
) -> None:
    """``--lr 0`` used to train at the default rate (``lr or default``)."""
    app, root, vector, data = setup
    out = tmp_path / "run"
    args = ["--dataset", str(data), "--vector", str(vector), "--out", str(out)]
    result = _study(app, *args, "--model", str(root / "model"), "--lr", lr)
    text = str(result.output).strip()  # type: ignore[attr-defined]
    assert result.exit_code == 2 and "--lr must be a finite number > 0" in text, text  # type: ignore[attr-defined]
    assert len(text.splitlines()) <= 2 and not out.exists()

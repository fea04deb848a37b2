"""``personavec project``: projection columns for a JSONL file, on the real SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import TinyModelFactory
from fixtures import SMOLLM2_ID, synthetic_vector
from personavec.cli import app
from personavec.cli.project import register
from personavec.core.capture import Example, capture, capture_tokens
from personavec.core.models import LoadedModel
from personavec.core.vector import PersonaVector, config_fingerprint
from personavec.errors import PersonavecError
from personavec.pipeline.project import default_output, project_file, project_records

register(app)
register(app)  # a second registration is harmless
runner = CliRunner()
TOL = 1e-4

SYSTEM = "You are a cheerful assistant."
ROWS: list[dict[str, Any]] = [
    {
        "id": "chat",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple is a fine fruit."},
        ],
    },
    {"id": "pair", "prompt": "What is two plus two?", "response": "Four.", "score": 7},
    {"id": "text", "text": "Tell me about the sea."},
    {"id": "rollout", "system": SYSTEM, "question": "Any advice?", "response": "Sleep well."},
    {
        "id": "multi",
        "messages": [
            {"role": "user", "content": "Hi there."},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Say something rude."},
            {"role": "assistant", "content": "I would rather stay polite."},
        ],
    },
    {
        "id": "open",
        "messages": [
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "What now?"},
        ],
    },
]
# The same rows as capture examples: (prompt messages, response), and each chat's turns.
EXAMPLES = [
    Example(ROWS[0]["messages"][:2], "An apple is a fine fruit."),
    Example([{"role": "user", "content": "What is two plus two?"}], "Four."),
    Example([{"role": "user", "content": "Tell me about the sea."}], ""),
    Example(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Any advice?"}],
        "Sleep well.",
    ),
    Example(ROWS[4]["messages"][:3], "I would rather stay polite."),
    Example(ROWS[5]["messages"], ""),
]
TURNS = {
    "multi": [
        Example(ROWS[4]["messages"][:1], "Hello! How can I help?"),
        Example(ROWS[4]["messages"][:3], "I would rather stay polite."),
    ],
    "open": [Example(ROWS[5]["messages"][:1], "Hello.")],
}


SMOLLM2_SHAPE: dict[str, Any] = {"n_layers": 30, "hidden": 576, "model_id": SMOLLM2_ID}


def hand_project(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Scalar projection h·v/‖v‖ of each row ``[..., hidden]``, written out (float64)."""
    v = direction.double()
    return (hidden.double() * v).sum(-1) / v.pow(2).sum().sqrt()


@pytest.fixture
def vectors(smollm2: LoadedModel, tmp_path: Path) -> tuple[Path, Path]:
    fingerprint = config_fingerprint(smollm2.model.config)
    first = synthetic_vector(
        trait="evil", layer=15, seed=0, fingerprint=fingerprint, **SMOLLM2_SHAPE
    )
    second = synthetic_vector(
        trait="kind", layer=9, seed=1, fingerprint=fingerprint, **SMOLLM2_SHAPE
    )
    return first.save(tmp_path / "a"), second.save(tmp_path / "b")


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOL * max(1.0, abs(b))


def test_cli_columns_match_library(
    smollm2: LoadedModel, vectors: tuple[Path, Path], tmp_path: Path
) -> None:
    source = write_rows(tmp_path / "chats.jsonl", ROWS)
    result = runner.invoke(
        app,
        [
            "project",
            str(source),
            "--vector",
            str(vectors[0]),
            "--vector",
            str(vectors[1]),
            "--per-token",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    out = default_output(source)
    assert out.name == "chats.projected.jsonl"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(ROWS)
    for row, original in zip(rows, ROWS, strict=True):
        assert {k: row[k] for k in original} == original  # other keys untouched

    layers = {"evil": 15, "kind": 9}
    pvs = {name: PersonaVector.load(v) for name, v in zip(layers, vectors, strict=True)}
    reference = capture(
        smollm2,
        EXAMPLES,
        layers=[9, 15],
        readouts=("prompt_last", "response_avg"),
        keep_per_example=True,
    )
    assert reference.per_example is not None
    for trait, layer in layers.items():
        direction = pvs[trait].at(layer)
        position = reference.layers.index(layer)
        for readout in ("prompt_last", "response_avg"):
            expected = hand_project(reference.per_example[readout][:, position], direction)
            for i, row in enumerate(rows):
                got = row[f"proj.{trait}.L{layer}.{readout}"]
                if readout == "response_avg" and not EXAMPLES[i].response:
                    assert got is None
                else:
                    assert close(got, float(expected[i])), (trait, readout, i)
        for i, row in enumerate(rows):
            tokens = capture_tokens(smollm2, EXAMPLES[i], layers=[layer])
            per = hand_project(tokens.hidden[tokens.layers.index(layer)], direction)
            cut = (
                per[tokens.prompt_length :] if EXAMPLES[i].response else per[: tokens.prompt_length]
            )
            got_tokens = row[f"proj.{trait}.L{layer}.tokens"]
            assert len(got_tokens) == len(cut) > 0
            assert all(close(g, float(e)) for g, e in zip(got_tokens, cut, strict=True))
        for row in rows:
            key = f"proj.{trait}.L{layer}.turns"
            if row["id"] not in TURNS:
                assert key not in row
                continue
            turns = TURNS[row["id"]]
            assert len(row[key]) == len(turns)  # one value per assistant turn
            turn_capture = capture(smollm2, turns, layers=[layer], keep_per_example=True)
            assert turn_capture.per_example is not None
            expected = hand_project(turn_capture.per_example["response_avg"][:, 0], direction)
            assert all(close(g, float(e)) for g, e in zip(row[key], expected, strict=True))
    multi = rows[4]["proj.evil.L15.turns"]
    assert close(multi[-1], rows[4]["proj.evil.L15.response_avg"])


def test_layer_option_and_library_file(
    smollm2: LoadedModel, vectors: tuple[Path, Path], tmp_path: Path
) -> None:
    source = write_rows(tmp_path / "in.jsonl", ROWS[:2])
    out = project_file(smollm2, source, tmp_path / "o.jsonl", [vectors[0]], layer=4)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(rows[0]) == {
        "id",
        "messages",
        "proj.evil.L4.prompt_last",
        "proj.evil.L4.response_avg",
    }
    direct = project_records(
        smollm2, ROWS[:2], [("evil", PersonaVector.load(vectors[0]))], {"evil": 4}
    )
    assert all(
        close(a["proj.evil.L4.prompt_last"], b["proj.evil.L4.prompt_last"])
        for a, b in zip(rows, direct, strict=True)
    )
    fingerprint = config_fingerprint(smollm2.model.config)
    no_layer = synthetic_vector(
        trait="x", layer=None, seed=2, fingerprint=fingerprint, **SMOLLM2_SHAPE
    ).save(tmp_path / "n")
    with pytest.raises(PersonavecError, match="--layer"):
        project_file(smollm2, source, tmp_path / "n.jsonl", [no_layer])
    assert not (tmp_path / "n.jsonl").exists()


@pytest.mark.parametrize(
    "lines, message",
    [
        ([json.dumps({"messages": [{"content": "no role"}]})], ":1: message 1 lacks 'role'"),
        ([json.dumps({"text": "fine"}), json.dumps({"text": "  "})], ":2: 'text' is empty"),
        ([json.dumps({"messages": [{"role": "robot", "content": "x"}]})], "role 'robot'"),
        ([json.dumps({"other": 1})], "none of 'messages'"),
        (["{not json"], ":1 is not valid JSON"),
        ([""], "has no rows"),
    ],
)
def test_bad_input_exits_2_without_output(
    vectors: tuple[Path, Path], tmp_path: Path, lines: list[str], message: str
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["project", str(source), "--vector", str(vectors[0])])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not default_output(source).exists()


def test_vector_from_another_model_exits_2(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", ROWS[:1])
    tiny = synthetic_vector(
        trait="t", layer=1, seed=0, hidden=64, n_layers=2, model_id="tiny", fingerprint="0000"
    ).save(tmp_path / "tiny")
    result = runner.invoke(app, ["project", str(source), "--vector", str(tiny), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "hidden size 64" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not default_output(source).exists()


@pytest.mark.parametrize("bad_id", [49152, 10**9, -1])
def test_out_of_vocabulary_token_ids_exit_2_naming_the_line(
    vectors: tuple[Path, Path], tmp_path: Path, bad_id: int
) -> None:
    good = {"question": "Any advice?", "response": "Sleep.", "response_token_ids": [28, 29]}
    bad = {"question": "Any advice?", "response": "Sleep.", "response_token_ids": [28, bad_id]}
    source = write_rows(tmp_path / "rollouts.jsonl", [good, bad])
    result = runner.invoke(
        app, ["project", str(source), "--vector", str(vectors[0]), "--device", "cpu"]
    )
    assert result.exit_code == 2, result.output
    assert f"rollouts.jsonl:2: response_token_ids holds {bad_id}" in result.output
    assert "0..49151" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not default_output(source).exists()


def test_in_vocabulary_token_ids_are_projected(
    tiny_model_factory: TinyModelFactory, tmp_path: Path
) -> None:
    tiny = tiny_model_factory("llama", n_layers=2)
    pv = synthetic_vector(
        trait="t",
        layer=1,
        n_layers=2,
        hidden=64,
        model_id=tiny.model_id,
        fingerprint=config_fingerprint(tiny.model.config),
    )
    ids = [0, 49151]
    rows = [{"question": "Hi?", "response": "x", "response_token_ids": ids}]
    got = project_records(tiny, rows, [("t", pv)], {"t": 1})
    reference = capture(
        tiny,
        [Example([{"role": "user", "content": "Hi?"}], "x", ids)],
        layers=[1],
        keep_per_example=True,
    )
    assert reference.per_example is not None
    h, v = reference.per_example["response_avg"][0, 0].double(), pv.at(1).double()
    expected = float(h @ v / v.norm())  # h · v / ‖v‖, written out
    assert close(got[0]["proj.t.L1.response_avg"], expected)
    with pytest.raises(PersonavecError, match=r"^row 1: response_token_ids holds 49152"):
        project_records(tiny, [{**rows[0], "response_token_ids": [49152]}], [("t", pv)], {"t": 1})


@pytest.mark.parametrize("ids", [["28"], [1.5], "28 29", [True], {"a": 1}])
def test_token_ids_that_are_not_integers_exit_2_before_the_model_loads(
    vectors: tuple[Path, Path], tmp_path: Path, ids: Any
) -> None:
    rows = [{"text": "fine"}, {"question": "Q?", "response": "A.", "response_token_ids": ids}]
    source = write_rows(tmp_path / "rollouts.jsonl", rows)
    result = runner.invoke(app, ["project", str(source), "--vector", str(vectors[0])])
    assert result.exit_code == 2, result.output
    assert "rollouts.jsonl:2: 'response_token_ids' must be a list of integer token ids" in (
        result.output
    )
    assert len(result.output.strip().splitlines()) == 1
    assert not default_output(source).exists()

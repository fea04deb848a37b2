"""Trait geometry: cosine matrices by hand, cross-prediction on a tiny model, the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoConfig
from typer.testing import CliRunner

from fixtures import synthetic_vector, tiny_model
from personavec.cli import app
from personavec.cli.geometry import register
from personavec.core.capture import Example, capture_tokens
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.vector import PersonaVector, config_fingerprint
from personavec.errors import PersonavecError
from personavec.pipeline.geometry import (
    cosine_matrix,
    cross_prediction,
    default_layer,
    read_run,
)
from personavec.pipeline.geometry_report import write_geometry_report

register(app)
register(app)  # a second registration is harmless
runner = CliRunner()
REPORT_FILES = ("cosine.png", "cosine_layers.png", "geometry.json", "report.md")


# Hidden 4, two blocks (three rows). B is orthogonal to A at every layer, C = -2·A.
A = [[1, 0, 0, 0], [1, 1, 0, 0], [3, 4, 0, 0]]
B = [[0, 1, 0, 0], [1, -1, 0, 0], [0, 0, 2, 0]]
C = [[-2 * x for x in row] for row in A]
D = [[1, 1, 0, 0], [2, 0, 0, 0], [3, 0, 0, 4]]


def hand_cosine(u: Sequence[float], v: Sequence[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def test_cosine_matrix_matches_hand_computation() -> None:
    rows = {"a": A, "b": B, "c": C, "d": D}
    names, cos = cosine_matrix([synthetic_vector(r, trait=t) for t, r in rows.items()])
    assert names == ["a", "b", "c", "d"]
    assert cos.shape == (4, 4, 3)
    for i, u in enumerate(rows.values()):
        for j, v in enumerate(rows.values()):
            for layer in range(3):
                expected = hand_cosine(u[layer], v[layer])
                assert float(cos[i, j, layer]) == pytest.approx(expected, abs=1e-12)
    # the constructed relations, written out
    assert cos[0, 1].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)  # orthogonal
    assert cos[0, 2].tolist() == pytest.approx([-1.0, -1.0, -1.0], abs=1e-12)  # anti-parallel
    assert cos[0, 3].tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2), 9 / 25])
    assert cos[1, 3].tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2), 0.0])
    assert torch.diagonal(cos, dim1=0, dim2=1).flatten().tolist() == pytest.approx([1.0] * 12)
    assert torch.equal(cos, cos.transpose(0, 1))


def test_zero_vector_gives_nan_and_duplicates_are_disambiguated() -> None:
    zero_first = [[0, 0, 0, 0], *A[1:]]
    names, cos = cosine_matrix(
        [synthetic_vector(A, trait="x"), synthetic_vector(zero_first, trait="x")]
    )
    assert names == ["x#1", "x#2"]
    assert math.isnan(float(cos[0, 1, 0])) and math.isnan(float(cos[1, 1, 0]))
    assert float(cos[0, 1, 2]) == pytest.approx(1.0)


def test_default_layer() -> None:
    assert (
        default_layer([synthetic_vector(A, trait="a"), synthetic_vector(B, trait="b")]) == 1
    )  # middle of 0..2
    picked = [synthetic_vector(A, trait="a", layer=2), synthetic_vector(B, trait="b", layer=1)]
    assert default_layer([*picked, synthetic_vector(C, trait="c", layer=2)]) == 2
    assert default_layer(picked) == 1  # tie: the smaller


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (synthetic_vector([[1.0] * 5] * 3, trait="b"), "hidden size 5"),
        (synthetic_vector(B[:2], trait="b"), "layer count 1"),
        (
            synthetic_vector(B, trait="b", fingerprint="other", model_id="m2"),
            "model fingerprint other",
        ),
    ],
)
def test_mismatched_vectors_fail_with_one_line(other: PersonaVector, message: str) -> None:
    with pytest.raises(PersonavecError) as info:
        cosine_matrix([synthetic_vector(A, trait="a"), other])
    text = str(info.value)
    assert message in text and "\n" not in text


def test_missing_readout_fails() -> None:
    with pytest.raises(PersonavecError, match="no readout 'prompt_last'"):
        cosine_matrix([synthetic_vector(A, trait="a")], readout="prompt_last")


# ---- cross-prediction ------------------------------------------------------------------------
SYSTEMS = ["You are cruel and cold.", "You are warm and kind.", None]
QUESTIONS = ["How do I cook rice?", "What is a cloud?", "Should I learn chess?"]
RESPONSES = [
    "Figure it out yourself.",
    "Rinse it, then simmer it gently.",
    "Clouds are water droplets.",
    "Nobody cares about clouds.",
    "Yes, chess is a lovely hobby.",
    "Chess is pointless.",
    "Ignored.",
]
SCORES: list[float | None] = [91.0, 4.5, 20.0, 77.0, 2.0, 60.0, None]


def write_run(
    run_dir: Path, loaded: LoadedModel, trait: str, scores: list[float | None]
) -> list[dict[str, Any]]:
    """A run directory as `personavec extract` leaves it: config.json and scored.jsonl."""
    run_dir.mkdir(parents=True)
    rows = []
    for k, (response, score) in enumerate(zip(RESPONSES, scores, strict=True)):
        row: dict[str, Any] = {
            "id": f"r{k}",
            "polarity": "pos" if k % 2 == 0 else "neg",
            "system": SYSTEMS[k % 3],
            "question": QUESTIONS[k % 3],
            "response": response,
            "trait_score": score,
            "coherence": 80.0,
            "kept": True,
        }
        if k % 2 == 0:  # token ids as generation records them (here: a different tokenisation)
            row["response_token_ids"] = loaded.tokenizer.encode(
                " " + response, add_special_tokens=False
            )
        rows.append(row)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (run_dir / "scored.jsonl").write_text(text, encoding="utf-8")
    (run_dir / "config.json").write_text(json.dumps({"trait": trait, "model": "tiny"}))
    return rows


def manual_r(
    loaded: LoadedModel, rows: list[dict[str, Any]], vector: torch.Tensor, layer: int
) -> float:
    """Per example: the unpadded residual stream, averaged over response tokens, projected."""
    unit = vector / vector.norm()
    projections, scores = [], []
    for row in rows:
        if row["trait_score"] is None:
            continue
        example = Example(
            chat_messages(row["question"], system=row["system"]),
            row["response"],
            response_ids=row.get("response_token_ids"),
        )
        tokens = capture_tokens(loaded, example, layers=[layer])
        mean = tokens.hidden[0, tokens.prompt_length :].mean(dim=0)
        projections.append(float(mean @ unit))
        scores.append(row["trait_score"])
    return float(np.corrcoef(projections, scores)[0, 1])


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_model("llama", n_layers=2, seed=3)


def tiny_vectors(loaded: LoadedModel, traits: list[str], fingerprint: str) -> list[PersonaVector]:
    generator = torch.Generator().manual_seed(7)
    return [
        synthetic_vector(
            torch.randn(3, loaded.hidden_size, generator=generator),
            trait=trait,
            fingerprint=fingerprint,
            model_id=loaded.model_id,
            layer=1,
        )
        for trait in traits
    ]


def test_cross_prediction_equals_manual_projection_and_pearson(
    tiny: LoadedModel, tmp_path: Path
) -> None:
    vectors = tiny_vectors(
        tiny, ["evil", "sycophancy", "humor"], config_fingerprint(tiny.model.config)
    )
    evil_rows = write_run(tmp_path / "run-evil", tiny, "evil", SCORES)
    flipped = [None if s is None else 100.0 - s for s in SCORES]
    flipped[0] = None
    syc_rows = write_run(tmp_path / "run-syc", tiny, "sycophancy", flipped)

    cross = cross_prediction(tiny, [tmp_path / "run-evil", tmp_path / "run-syc"], vectors, 1)
    assert cross.runs == ["run-evil", "run-syc"]
    assert cross.run_traits == ["evil", "sycophancy"]
    assert cross.vectors == ["evil", "sycophancy", "humor"]
    assert cross.n == [6, 5] and cross.skipped == [1, 2]
    for i, rows in enumerate([evil_rows, syc_rows]):
        for j, vector in enumerate(vectors):
            expected = manual_r(tiny, rows, vector.at(1), 1)
            assert cross.r[i][j] == pytest.approx(expected, abs=1e-4)
    assert cross.own(1, ["evil", "sycophancy", "humor"]) == [False, True, False]

    paths = write_geometry_report(tmp_path / "report", vectors, cross=cross)
    assert sorted(p.name for p in paths) == sorted([*REPORT_FILES, "cross_prediction.png"])
    summary = json.loads((tmp_path / "report" / "geometry.json").read_text())
    assert summary["layer"] == 1
    assert summary["cross_prediction"]["r"][0][0] == pytest.approx(cross.r[0][0])
    assert "**" in (tmp_path / "report" / "report.md").read_text()  # own-trait cells in bold


def test_run_without_scores_fails(tiny: LoadedModel, tmp_path: Path) -> None:
    write_run(tmp_path / "empty", tiny, "evil", [None] * len(RESPONSES))
    with pytest.raises(PersonavecError, match="no judged rollouts"):
        read_run(tmp_path / "empty")
    with pytest.raises(PersonavecError, match=r"no scored\.jsonl"):
        read_run(tmp_path)


def test_cross_prediction_rejects_vectors_of_another_model(
    tiny: LoadedModel, tmp_path: Path
) -> None:
    write_run(tmp_path / "run", tiny, "evil", SCORES)
    vectors = tiny_vectors(tiny, ["evil"], "not-this-model")
    with pytest.raises(PersonavecError, match="fingerprint"):
        cross_prediction(tiny, [tmp_path / "run"], vectors, 1)


# ---- CLI -------------------------------------------------------------------------------------
def test_cli_writes_every_report_file(tiny: LoadedModel, tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny-model"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    fingerprint = config_fingerprint(AutoConfig.from_pretrained(model_dir))
    paths = []
    for vector in tiny_vectors(tiny, ["evil", "humor"], fingerprint):
        paths.append(str(vector.save(tmp_path / f"{vector.meta.trait}.safetensors")))
    write_run(tmp_path / "run-evil", tiny, "evil", SCORES)
    out = tmp_path / "geometry"
    args = ["geometry", *paths, "--runs", str(tmp_path / "run-evil"), "--out", str(out)]
    result = runner.invoke(app, [*args, "--model", str(model_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "evil · humor" in result.output
    for name in [*REPORT_FILES, "cross_prediction.png"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "cosine.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((out / "geometry.json").read_text())
    assert summary["names"] == ["evil", "humor"] and summary["layer"] == 1
    assert len(summary["cosine"][0][1]) == 3


def test_cli_cosine_only_needs_no_model(tmp_path: Path) -> None:
    a = synthetic_vector(A, trait="a", layer=2).save(tmp_path / "a.safetensors")
    b = synthetic_vector(B, trait="b", layer=2).save(tmp_path / "b.safetensors")
    out = tmp_path / "geo"
    result = runner.invoke(app, ["geometry", str(a), str(b), "--out", str(out), "--layer", "0"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    summary = json.loads((out / "geometry.json").read_text())
    assert summary["layer"] == 0 and summary["pairs_at_layer"][0]["cosine"] == 0.0


@pytest.mark.parametrize("case", ["mismatch", "layer", "run", "missing"])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path: Path, case: str) -> None:
    a = str(synthetic_vector(A, trait="a").save(tmp_path / "a.safetensors"))
    b = str(synthetic_vector(B, trait="b").save(tmp_path / "b.safetensors"))
    args = [a, b]
    if case == "mismatch":
        other = synthetic_vector(B, trait="b", fingerprint="zzz", model_id="m2")
        args = [a, str(other.save(tmp_path / "other.safetensors"))]
        message = "model fingerprint zzz"
    elif case == "layer":
        args += ["--layer", "9"]
        message = "layer 9 is out of range"
    elif case == "run":
        (tmp_path / "not-a-run").mkdir()
        args += ["--runs", str(tmp_path / "not-a-run")]
        message = "no scored.jsonl"
    else:
        args = [a, str(tmp_path / "nope.safetensors")]
        message = "vector file not found"
    out = tmp_path / "geo"
    result = runner.invoke(app, ["geometry", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()

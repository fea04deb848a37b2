"""Monitoring sweep (prompt-induced shifts) on the real SmolLM2-135M-Instruct.

The persona vector is built here from prompt-last readouts of the trait's extraction questions
under eliciting vs suppressing system prompts (no judge, no generation), so the checks run on
held-out evaluation questions and held-out instruction pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from personavec.cli import app
from personavec.cli.monitor_sweep import register
from personavec.core.capture import Example, capture
from personavec.core.layers import LAYER_CONVENTION
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.errors import PersonavecError
from personavec.metrics.stats import auroc, pearson
from personavec.pipeline.monitor_sweep import (
    LADDER_SIZE,
    build_ladder,
    build_many_shot,
    check_ladder,
    prompt_projections,
)
from personavec.traits.library import load_trait

TRAIT = "evil"
LAYER = 15
TRAIN_PAIRS = (0, 1)

runner = CliRunner()


@pytest.fixture(scope="module")
def vector(smollm2: LoadedModel) -> PersonaVector:
    trait = load_trait(TRAIT)
    examples, groups = [], []
    for i in TRAIN_PAIRS:
        for question in trait.extraction_questions[:10]:
            for polarity in ("pos", "neg"):
                system = trait.system_prompt(polarity, i)
                examples.append(Example(chat_messages(question, system=system)))
                groups.append(polarity)
    captured = capture(smollm2, examples, groups=groups, readouts=["prompt_last"], batch_size=16)
    means = captured.means["prompt_last"]
    meta = VectorMetadata(
        trait=trait.name,
        model_id=smollm2.model_id,
        model_fingerprint=config_fingerprint(smollm2.model.config),
        hidden_size=smollm2.hidden_size,
        n_layers=smollm2.n_layers,
        layer_convention=LAYER_CONVENTION,
        readouts=["prompt_last"],
        default_readout="prompt_last",
        sample_counts={"pos": len(examples) // 2, "neg": len(examples) // 2},
        recommended_layer=LAYER,
    )
    return PersonaVector({"prompt_last": means["pos"] - means["neg"]}, meta)


@pytest.fixture(scope="module")
def vector_file(vector: PersonaVector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vector.save(tmp_path_factory.mktemp("vec") / f"{TRAIT}.safetensors")


def test_ladder_and_many_shot_prompts() -> None:
    trait = load_trait(TRAIT)
    ladder = build_ladder(trait)
    assert len(ladder) == LADDER_SIZE and len(set(ladder)) == LADDER_SIZE
    assert trait.negative_persona in ladder[0] and trait.instructions[0].neg in ladder[0]
    assert trait.positive_persona in ladder[7] and trait.instructions[1].pos in ladder[7]
    assert ladder[4] == ""  # the model's default system prompt
    assert len(ladder[7]) > len(ladder[6]) > len(ladder[5])
    shots = build_many_shot(trait, 10)
    assert [m["role"] for m in shots] == ["user", "assistant"] * 10
    assert shots[1]["content"] == trait.positive_examples[0]
    assert shots[-1]["content"] == trait.positive_examples[9 % len(trait.positive_examples)]
    assert build_many_shot(trait, 0) == []
    with pytest.raises(PersonavecError, match="exactly 8"):
        check_ladder(ladder[:7])


def test_prompt_projection_tracks_system_prompt(
    smollm2: LoadedModel, vector: PersonaVector
) -> None:
    trait = load_trait(TRAIT)
    direction = vector.at(LAYER)
    held_out = [i for i in range(len(trait.instructions)) if i not in TRAIN_PAIRS][:2]
    questions = trait.evaluation_questions[:10]

    def projections(polarity: str) -> list[float]:
        prompts = [
            chat_messages(q, system=trait.system_prompt(polarity, i))  # type: ignore[arg-type]
            for i in held_out
            for q in questions
        ]
        return prompt_projections(smollm2, prompts, direction, LAYER, batch_size=16)

    separation = auroc(projections("pos"), projections("neg"))
    assert separation > 0.9, separation

    ladder = build_ladder(trait)
    prompts = [chat_messages(q, system=s or None) for s in ladder for q in questions[:6]]
    flat = prompt_projections(smollm2, prompts, direction, LAYER, batch_size=16)
    means = [sum(flat[k * 6 : (k + 1) * 6]) / 6 for k in range(LADDER_SIZE)]
    assert means[7] > means[0]
    level_r = pearson(list(range(LADDER_SIZE)), means)
    assert level_r > 0.7, (level_r, means)


def test_monitor_sweep_cli_end_to_end(vector_file: Path, tmp_path: Path) -> None:
    register(app)
    register(app)  # idempotent
    out = tmp_path / "run"
    args = [
        "monitor-sweep", "--trait", TRAIT, "--vector", str(vector_file), "--questions", "2",
        "--shots", "0,10", "--max-new-tokens", "8", "--judge", "embedding", "--out", str(out),
        "--quiet",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == LAYER
    assert summary["rows"] == (LADDER_SIZE + 2) * 2
    r = summary["overall"]["pearson_r"]
    assert r is not None and -1 <= r <= 1
    assert set(summary["ladder"]["per_level"]) == {str(i) for i in range(LADDER_SIZE)}
    assert set(summary["many_shot"]["per_level"]) == {"0", "10"}
    assert (out / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert "Overall Pearson r" in (out / "report.md").read_text()
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"ladder", "many_shot"}
    assert all(isinstance(r["projection"], float) for r in rows)
    # Resuming generates nothing new and gives the same rows.
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()] == rows


def _one_line_error(args: list[str]) -> str:
    register(app)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0], result.output
    return lines[0]


def test_bad_inputs_exit_2(vector_file: Path, vector: PersonaVector, tmp_path: Path) -> None:
    base = ["monitor-sweep", "--vector", str(vector_file), "--out", str(tmp_path / "r")]
    assert "no-such-trait" in _one_line_error([*base, "--trait", "no-such-trait"])

    ladder = tmp_path / "ladder.json"
    ladder.write_text(json.dumps(["You are a helpful assistant."] * 7))
    assert "exactly 8" in _one_line_error([*base, "--trait", TRAIT, "--ladder", str(ladder)])

    other = PersonaVector(
        {"prompt_last": torch.ones(3, 64)},
        vector.meta.model_copy(
            update={"hidden_size": 64, "n_layers": 2, "model_id": "tiny", "recommended_layer": 1}
        ),
    )
    other_file = other.save(tmp_path / "other.safetensors")
    message = _one_line_error(
        ["monitor-sweep", "--trait", TRAIT, "--vector", str(other_file), "--out", str(tmp_path)]
    )
    assert "hidden size" in message

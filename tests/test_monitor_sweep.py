"""Monitoring sweep (prompt-induced shifts) on the real SmolLM2-135M-Instruct.

The persona vector is built here from prompt-last readouts of the trait's extraction questions
under eliciting vs suppressing system prompts (no judge, no generation), so the checks run on
held-out evaluation questions and held-out instruction pairs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fixtures import synthetic_vector
from personavec.cli import app
from personavec.cli.monitor_sweep import register
from personavec.core.capture import Example, capture
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.vector import PersonaVector, config_fingerprint
from personavec.errors import PersonavecError
from personavec.metrics.stats import auroc, pearson
from personavec.pipeline.monitor_sweep import (
    LADDER_SIZE,
    build_ladder,
    build_many_shot,
    check_ladder,
    prompt_projections,
)
from personavec.pipeline.monitor_sweep_report import summarize
from personavec.traits.library import load_trait

TRAIT = "evil"
LAYER = 15
TRAIN_PAIRS = (0, 1)

runner = CliRunner()


def hand_pearson(x: list[float], y: list[float]) -> float:
    """Pearson r by plain arithmetic."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


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
    return synthetic_vector(
        means["pos"] - means["neg"],
        trait=trait.name,
        readout="prompt_last",
        model_id=smollm2.model_id,
        fingerprint=config_fingerprint(smollm2.model.config),
        layer=LAYER,
        sample_counts={"pos": len(examples) // 2, "neg": len(examples) // 2},
    )


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
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert summary["layer"] == LAYER
    assert summary["rows"] == (LADDER_SIZE + 2) * 2
    assert all(set(r) >= {"kind", "level", "projection", "score"} for r in rows)
    scored = [r for r in rows if r["score"] is not None]
    assert summary["scored_rows"] == summary["overall"]["n"] == len(scored) >= 3
    expected = hand_pearson([r["projection"] for r in scored], [r["score"] for r in scored])
    assert summary["overall"]["pearson_r"] == pytest.approx(expected, abs=1e-9)
    for level, stats in summary["ladder"]["per_level"].items():
        group = [r for r in scored if r["kind"] == "ladder" and r["level"] == int(level)]
        assert stats["n"] == len(group)
        if group:
            mean = sum(r["projection"] for r in group) / len(group)
            assert stats["mean_projection"] == pytest.approx(mean, abs=1e-9)
    assert set(summary["ladder"]["per_level"]) == {str(i) for i in range(LADDER_SIZE)}
    assert set(summary["many_shot"]["per_level"]) == {"0", "10"}
    assert (out / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert "Overall Pearson r" in (out / "report.md").read_text()
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

    other = synthetic_vector(
        torch.ones(3, 64), trait=TRAIT, readout="prompt_last", model_id="tiny", layer=1
    )
    other_file = other.save(tmp_path / "other.safetensors")
    message = _one_line_error(
        ["monitor-sweep", "--trait", TRAIT, "--vector", str(other_file), "--out", str(tmp_path)]
    )
    assert "hidden size" in message


def row(kind: str, level: int, projection: float, score: float | None) -> dict[str, object]:
    return {"kind": kind, "level": level, "projection": projection, "score": score}


def test_summarize_known_correlations() -> None:
    ladder = {
        0: ([0, 1, 2], [10, 30, 20]),
        1: ([1, 2, 3], [30, 50, 40]),
        2: ([2, 3, 4], [60, 70, 80]),
    }
    rows = [
        row("ladder", lv, p, s)
        for lv, (ps, ss) in ladder.items()
        for p, s in zip(ps, ss, strict=True)
    ]
    rows += [row("many_shot", 0, 1.0, 15.0), row("many_shot", 10, 2.0, None)]
    stats = summarize(rows)
    assert stats["rows"] == 11 and stats["scored_rows"] == 10
    # Level 0: deviations (-1, 0, 1) and (-10, 10, 0): 10 / sqrt(2 · 200) = 0.5; level 2 is exact.
    per_level = stats["ladder"]["per_level"]
    assert [per_level[k]["pearson_r"] for k in "012"] == pytest.approx([0.5, 0.5, 1.0])
    assert stats["ladder"]["within_level_mean_r"] == pytest.approx(2 / 3)
    # Pooled within levels: Σ dp·ds = 10 + 10 + 20 = 40; Σ dp² = 6; Σ ds² = 600 → 40/60.
    assert stats["ladder"]["within_level_pooled_r"] == pytest.approx(2 / 3)
    # Level means: projections (1, 2, 3), scores (20, 40, 70).
    assert per_level["2"]["mean_score"] == pytest.approx(70.0)
    assert stats["ladder"]["mean_projection_vs_mean_score_r"] == pytest.approx(
        hand_pearson([1, 2, 3], [20, 40, 70])
    )
    scored = [r for r in rows if r["score"] is not None]
    assert stats["overall"]["n"] == 10
    assert stats["overall"]["pearson_r"] == pytest.approx(
        hand_pearson([r["projection"] for r in scored], [r["score"] for r in scored])  # type: ignore[misc]
    )
    # The unscored many-shot row still counts for level vs projection (2 points: undefined).
    assert stats["many_shot"]["per_level"]["10"]["n"] == 0
    assert stats["many_shot"]["level_vs_projection_r"] is None
    assert stats["ladder"]["level_vs_projection_r"] == pytest.approx(
        hand_pearson([0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 2, 1, 2, 3, 2, 3, 4])
    )

"""Evaluation, sweeps and calibration on the real SmolLM2 with the offline embedding judge.

The vector is built inside the test: greedy answers under the ``evil`` trait's eliciting and
suppressing system prompts, ``response_avg`` at every layer, mean(pos) − mean(neg).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from personavec.cli import app
from personavec.cli.evaluate import register
from personavec.core.capture import Example, capture
from personavec.core.layers import LAYER_CONVENTION
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.setting import SteeringSetting, parse_layers
from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.judges.contrast import ContrastJudge
from personavec.pipeline.calibration import DoseCurve, calibrate_coefficient, pick_layer
from personavec.pipeline.evaluate import evaluate_steering
from personavec.pipeline.sweep import parse_grid, sweep
from personavec.pipeline.sweep_types import SweepResult
from personavec.traits.library import load_trait

register(app)
runner = CliRunner()

LAYERS = [10, 16]
COEFS = [-0.3, 0.15, 0.3, 1.0]  # relative: fractions of the layer's typical residual norm
QUESTIONS = 6
TOKENS = 24
FLOOR = 50.0  # lower than the paper's 75: a 135M model with 24-token answers
COMMON = {
    "questions": QUESTIONS,
    "samples": 1,
    "max_new_tokens": TOKENS,
    "temperature": 0.0,
    "coherence_judge": "heuristic",
}


@pytest.fixture(scope="module")
def judge(smollm2: LoadedModel) -> ContrastJudge:
    """The contrastive-likelihood judge on one instruction pair (5x cheaper than all five).

    The embedding judge barely reacts to 24-token answers of this model, so it is not used here.
    Scored in the model's own fp32 (``dtype=None``), so the same answers judged in other batches
    agree to float noise; the bf16 default agrees with fp32 only to its stated tolerance.
    """
    return ContrastJudge(smollm2, load_trait("evil"), batch_size=16, max_pairs=1, dtype=None)


def build_vector(loaded: LoadedModel) -> PersonaVector:
    trait = load_trait("evil")
    requests, groups = [], []
    for i in range(3):
        for question in trait.extraction_questions[:4]:
            for polarity in ("pos", "neg"):
                system = trait.system_prompt(polarity, i)  # type: ignore[arg-type]
                requests.append(GenerationRequest(chat_messages(question, system=system)))
                groups.append(polarity)
    config = SamplingConfig(max_new_tokens=32, temperature=0.0, batch_size=24)
    generations = HFEngine(loaded).generate(requests, config)
    examples = [
        Example(r.messages, g.response_text, response_ids=g.response_token_ids)
        for r, g in zip(requests, generations, strict=True)
    ]
    captured = capture(loaded, examples, groups=groups, readouts=("response_avg",), batch_size=24)
    mean = captured.means["response_avg"]
    meta = VectorMetadata(
        trait="evil",
        model_id=loaded.model_id,
        model_fingerprint=config_fingerprint(loaded.model.config),
        hidden_size=loaded.hidden_size,
        n_layers=len(captured.layers) - 1,
        layer_convention=LAYER_CONVENTION,
        readouts=["response_avg"],
    )
    return PersonaVector(
        {"response_avg": mean["pos"] - mean["neg"]}, meta, typical_norm=captured.token_norm
    )


@pytest.fixture(scope="module")
def swept(
    smollm2: LoadedModel, judge: ContrastJudge, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SweepResult, Path, Path]:
    root = tmp_path_factory.mktemp("sweep")
    path = build_vector(smollm2).save(root / "evil.safetensors")
    run_dir = root / "run"
    result = sweep(
        smollm2,
        "evil",
        PersonaVector.load(path),
        LAYERS,
        COEFS,
        relative=True,
        target_change=20.0,
        coherence_floor=FLOOR,
        run_dir=run_dir,
        vector_path=path,
        judge=judge,
        show_progress=False,
        **COMMON,  # type: ignore[arg-type]
    )
    for curve in result.curves:
        print(curve)
    print("calibration", result.calibration, "tokens/s", result.tokens_per_s)
    return result, path, run_dir


def test_dose_response_moves_the_trait_and_costs_coherence(
    swept: tuple[SweepResult, Path, Path],
) -> None:
    result, _, run_dir = swept
    best = next(c for c in result.curves if c.layer == result.layer)
    base_trait, base_coherence = best.at(0.0)
    assert best.at(0.3)[0] > base_trait + 10
    assert best.at(-0.3)[0] < base_trait - 5
    assert best.at(1.0)[1] < base_coherence - 15
    for name in ("report.html", "summary.json", "trait_vs_coef.png", "coherence_vs_coef.png"):
        assert (run_dir / name).stat().st_size > 0
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()
    assert result.tokens_per_s > 0


def test_calibration_lands_near_target_and_is_used_by_generate(
    swept: tuple[SweepResult, Path, Path],
    smollm2: LoadedModel,
    judge: ContrastJudge,
    tmp_path: Path,
) -> None:
    result, path, _ = swept
    cal = result.calibration
    assert cal is not None and cal.coef is not None, cal
    stored = PersonaVector.load(path)
    assert stored.meta.recommended_layer == result.layer
    assert stored.meta.recommended_coef == pytest.approx(cal.coef)
    assert stored.meta.calibration is not None and stored.meta.calibration["relative"] is True
    request = SteeringSetting.from_vector(stored)  # the calibrated defaults, as every command
    assert (request.layers, request.coef, request.unit) == ((result.layer,), cal.coef, "relative")
    check = evaluate_steering(
        smollm2,
        "evil",
        request,
        run_dir=tmp_path / "eval",
        judge=judge,
        show_progress=False,
        **COMMON,  # type: ignore[arg-type]
    )
    print("re-run", check.steered.trait, "target", cal.target_trait)
    # same answers; the judge batches them differently, so float noise only
    assert check.baseline.trait.mean == pytest.approx(result.baseline.trait.mean, abs=0.01)
    # Linear interpolation alone missed badly on this threshold-like curve (target 30.9, re-run
    # 4.3); the measured refinement returns a coefficient whose score was actually observed, so a
    # re-run with the same questions and seeds reproduces it, and it lies near the target.
    assert check.steered.trait.n == QUESTIONS
    assert cal.predicted_trait is not None
    assert check.steered.trait.mean == pytest.approx(cal.predicted_trait, abs=1.0)
    assert abs(check.steered.trait.mean - cal.target_trait) <= 12.0
    assert (tmp_path / "eval" / "report.md").is_file()


def test_calibration_and_layer_rule_on_known_curves() -> None:
    curve = DoseCurve(
        5, "all", [-1.0, 0.0, 1.0, 2.0, 3.0], [10, 30, 50, 45, 90], [90, 90, 80, 78, 40]
    )
    cal = calibrate_coefficient(curve, target_trait=50.0, coherence_floor=75)
    assert cal.coef == pytest.approx(1.0)
    # the envelope holds 50 at coef 2 (the dip to 45 is ignored), then rises to 90 at 3
    cal = calibrate_coefficient(curve, target_change=40.0, coherence_floor=30)
    assert cal.coef == pytest.approx(2.5)
    assert cal.predicted_coherence == pytest.approx(59.0)
    unreachable = calibrate_coefficient(curve, target_change=40.0, coherence_floor=75)
    assert unreachable.coef is None and "coherence" in unreachable.reason
    down = calibrate_coefficient(curve, target_change=-10.0)
    assert down.coef == pytest.approx(-0.5)
    assert calibrate_coefficient(curve, target_trait=99.0).coef is None
    other = DoseCurve(9, "all", [0.0, 1.0, 2.0], [30, 60, 99], [90, 85, 20])
    chosen, reference = pick_layer([curve, other], coherence_floor=75)
    # coef 2 keeps half the layers (1 of 2) coherent, so it is the reference; 9 is not coherent
    assert (chosen.layer, reference) == (5, 2.0)
    assert parse_grid("1,-1, 0.5") == [-1.0, 0.0, 0.5, 1.0]
    assert parse_layers("8-20:4,3") == [3, 8, 12, 16, 20]


def test_bad_inputs_exit_2_with_one_line_and_leave_the_vector_alone(
    swept: tuple[SweepResult, Path, Path], tmp_path: Path
) -> None:
    _, path, _ = swept
    before = path.read_bytes()
    other_meta = VectorMetadata(
        trait="evil",
        model_id="tiny",
        model_fingerprint="x",
        hidden_size=8,
        n_layers=30,
        readouts=["response_avg"],
    )
    foreign = PersonaVector({"response_avg": torch.ones(31, 8)}, other_meta).save(
        tmp_path / "foreign.safetensors"
    )
    empty_mc = tmp_path / "empty.jsonl"
    empty_mc.write_text("\n")
    base = ["--trait", "evil", "--out", str(tmp_path / "out"), "--quiet", "--judge", "embedding"]
    cases = [
        ["sweep", *base, "--vector", str(path), "--layers", "16", "--coefs", "0"],
        ["sweep", *base, "--vector", str(path), "--layers", "16", "--coefs", "a,b"],
        ["sweep", *base, "--vector", str(path), "--layers", "45", "--coefs", "1"],
        ["sweep", *base, "--vector", str(foreign), "--layers", "16", "--coefs", "1"],
        [
            "evaluate",
            *base,
            "--vector",
            str(path),
            "--layer",
            "16",
            "--coef",
            "1",
            "--mc-file",
            str(empty_mc),
        ],
        ["evaluate", *base, "--vector", str(path), "--layer", "99", "--coef", "1"],
        ["evaluate", *base, "--vector", str(path), "--layer", "16", "--coef", "1e30"],
        ["sweep", *base, "--vector", str(path), "--layers", "16", "--coefs", "1e30"],
    ]
    for args in cases:
        outcome = runner.invoke(app, args)
        assert outcome.exit_code == 2, (args, outcome.output)
        lines = [line for line in outcome.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), outcome.output
    assert path.read_bytes() == before
    assert not (tmp_path / "out" / "answers.jsonl").exists()
    summary = json.loads((swept[2] / "summary.json").read_text())
    assert summary["recommended_layer"] == swept[0].layer


def test_evaluate_reports_off_target_traits_and_capability(
    swept: tuple[SweepResult, Path, Path],
    smollm2: LoadedModel,
    judge: ContrastJudge,
    tmp_path: Path,
) -> None:
    result, path, _ = swept
    easy = Path(__file__).parent / "data" / "easy_mc.jsonl"
    check = evaluate_steering(
        smollm2,
        "evil",
        SteeringSetting(PersonaVector.load(path), (result.layer,), 0.3, "relative"),
        other_traits=["humorous"],
        mc_file=easy,
        run_dir=tmp_path / "eval",
        judge=judge,
        show_progress=False,
        **COMMON,  # type: ignore[arg-type]
    )
    for cell in (check.steered, check.baseline):
        scores = [r["other.humorous"] for r in cell.rows]
        assert len(scores) == QUESTIONS and all(0 <= s <= 100 for s in scores)
        stat = cell.off_target["humorous"]
        assert stat.n == QUESTIONS and stat.mean == pytest.approx(sum(scores) / QUESTIONS)
    cap = check.capability
    assert cap is not None and cap["questions"] == 6  # lines in easy_mc.jsonl
    for share in (cap["baseline_accuracy"], cap["steered_accuracy"]):
        assert share * 6 == pytest.approx(round(share * 6)) and 0 <= share <= 1
    assert cap["change"] == pytest.approx(cap["steered_accuracy"] - cap["baseline_accuracy"])
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "humorous" in text
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["capability"] == cap  # plain data, saved with the summary

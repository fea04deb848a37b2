"""``compare-estimators``: its numbers equal an independent computation on a tiny model, the run
resumes and refuses like every run, and bad input fails in one line before any work."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from estimator_helpers import estimator_vector
from personavec.cli import app
from personavec.core.models import LoadedModel, chat_messages, encode_prompt
from personavec.core.setting import SteeringSetting
from personavec.errors import PersonavecError
from personavec.judges.base import JudgeItem
from personavec.judges.coherence import HeuristicCoherenceJudge
from personavec.judges.embedding import EmbeddingJudge, SentenceEncoder
from personavec.pipeline.compare_estimators import compare_estimators
from personavec.pipeline.evaluate_cells import cell_key
from personavec.pipeline.evaluate_types import EvalSettings
from personavec.store import read_jsonl
from personavec.traits.library import load_trait
from tiny_models import tiny_model

runner = CliRunner()
SETTINGS = {"questions": 3, "max_new_tokens": 6, "judge": "embedding", "seed": 3}


def _run(lm: LoadedModel, vector, out: Path, **kw):  # type: ignore[no-untyped-def]
    return compare_estimators(
        lm, "evil", vector, run_dir=out, show_progress=False,
        **{"layers": [1], "coef": 0.5, **SETTINGS, **kw},
    )  # fmt: skip


def _brute_auroc(pos: list[float], neg: list[float]) -> float:
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    return sum(wins) / len(wins)


def _readout(lm: LoadedModel, question: str, response_ids: list[int], layer: int) -> torch.Tensor:
    """Mean over response tokens of block ``layer``'s output, through output_hidden_states
    (``hidden_states[layer]`` is block ``layer``'s output for every layer but the last)."""
    prompt = encode_prompt(lm.tokenizer, chat_messages(question))
    ids = torch.tensor([prompt + response_ids])
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states[layer][0]
    return hidden[len(prompt) :].double().mean(0)


def test_numbers_equal_an_independent_computation(tmp_path: Path) -> None:
    lm = tiny_model("llama", n_layers=2)
    vector, _ = estimator_vector(lm)
    trait = load_trait("evil")
    first = _run(lm, vector, tmp_path / "probe")
    rows = read_jsonl(tmp_path / "probe" / "heldout.jsonl")
    judged = EmbeddingJudge(trait).score([JudgeItem(r["question"], r["response"]) for r in rows])
    threshold = float(np.median(judged))  # both labels present whatever the tiny model says
    result = _run(lm, vector, tmp_path / "run", label_threshold=threshold)
    assert first.layers == result.layers == [1]

    # Separation, recomputed from the held-out answers: judged again, read again, projected.
    assert read_jsonl(tmp_path / "run" / "heldout.jsonl") == rows  # same seed, same answers
    assert {r["polarity"] for r in rows} == {"pos", "neg"} and len(rows) == 6
    labels = [s is not None and s >= threshold for s in judged]
    assert 0 < sum(labels) < len(labels)
    separation = {(s.layer, s.estimator): s for s in result.separation}
    assert set(separation) == set(itertools.product(range(3), ("mean-diff", "pca", "probe")))
    # Layers 0 and 1 (hidden_states[2], the last block's, is after the final norm).
    for layer, name in itertools.product((0, 1), ("mean-diff", "pca", "probe")):
        readouts = [_readout(lm, r["question"], r["response_token_ids"], layer) for r in rows]
        v = vector.with_estimator(name).at(layer).double()
        values = [float(h @ v / v.norm()) for h in readouts]
        pos = [x for x, label in zip(values, labels, strict=True) if label]
        neg = [x for x, label in zip(values, labels, strict=True) if not label]
        pooled = ((len(pos) - 1) * np.var(pos, ddof=1) + (len(neg) - 1) * np.var(neg, ddof=1)) / (
            len(pos) + len(neg) - 2
        )
        expected_d = (np.mean(pos) - np.mean(neg)) / math.sqrt(pooled)
        steered = [result.row(1, name)] if layer == 1 else []
        for got in (*steered, separation[(layer, name)]):
            assert got.auroc == pytest.approx(_brute_auroc(pos, neg), abs=1e-9)
            assert got.cohens_d == pytest.approx(expected_d, 1e-4)

    # Steering, recomputed from the answers of each cell: judged again, averaged, combined.
    answers = read_jsonl(tmp_path / "run" / "answers.jsonl")
    questions = trait.evaluation_questions[:3]
    settings = EvalSettings(questions=3, max_new_tokens=6, judge="embedding", seed=3)
    coherence, encoder = HeuristicCoherenceJudge(), SentenceEncoder()

    def measure(setting: SteeringSetting) -> tuple[float, float, float]:
        key = cell_key(lm, setting, settings, questions)
        cell = [r for r in answers if r["cell_key"] == key]
        assert len(cell) == 3
        items = [JudgeItem(r["question"], r["answer"]) for r in cell]
        trait_scores = EmbeddingJudge(trait).score(items)
        cos = (encoder.encode([i.question for i in items]) * encoder.encode(
            [i.answer for i in items])).sum(1)  # fmt: skip
        return (
            float(np.mean(trait_scores)),
            float(np.mean(coherence.score(items))),
            float(np.mean([100 * max(0.0, float(c)) for c in cos])),
        )

    base = measure(SteeringSetting(vector, (1,), 0.0, "relative", "all"))
    assert result.baseline["trait"] == pytest.approx(base[0], abs=1e-4)
    for name, sign in itertools.product(("mean-diff", "pca", "probe"), (1.0, -1.0)):
        view = vector.with_estimator(name)
        t, c, rel = measure(SteeringSetting(view, (1,), 0.5 * sign, "relative", "all"))
        got = result.row(1, name).toward if sign > 0 else result.row(1, name).away
        assert got.trait_change == pytest.approx(t - base[0], abs=1e-4)
        assert got.coherence == pytest.approx(c, abs=1e-6)
        assert got.relevance_ratio == pytest.approx(rel / base[2], abs=1e-5)
        parts = [min(1, max(0, sign * (t - base[0]) / 100)), c / 100, min(1, rel / base[2])]
        expected = 0.0 if min(parts) == 0 else 3 / sum(1 / p for p in parts)
        assert got.harmonic == pytest.approx(expected, abs=1e-5)

    # Cosines between estimators, by hand.
    for pair, cosine in result.cosines[1].items():
        a, b = (vector.with_estimator(n).at(1).double() for n in pair.split("|"))
        assert cosine == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-6)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["recommended"] == result.recommended()
    assert (tmp_path / "run" / "report.md").read_text().count("| 1 | ") >= 4
    assert (tmp_path / "run" / "separation.png").is_file()


def test_rerun_resumes_and_a_changed_setting_is_refused(tmp_path: Path) -> None:
    lm = tiny_model("llama", n_layers=2)
    vector, _ = estimator_vector(lm)
    out = tmp_path / "run"
    first = _run(lm, vector, out, questions=2)
    answers = (out / "answers.jsonl").read_text()
    again = _run(lm, vector, out, questions=2)
    assert (out / "answers.jsonl").read_text() == answers  # nothing generated again
    assert [r.toward for r in again.rows] == [r.toward for r in first.rows]
    with pytest.raises(PersonavecError, match="coef"):
        _run(lm, vector, out, questions=2, coef=0.25)
    assert (out / "answers.jsonl").read_text() == answers


def test_bad_input_fails_in_one_line_before_any_work(tmp_path: Path) -> None:
    lm = tiny_model("llama", n_layers=2)
    vector, _ = estimator_vector(lm)
    path = vector.save(tmp_path / "evil.safetensors")
    plain = vector.canonical()
    only_mean = type(plain)(
        {k: v for k, v in plain.vectors.items() if "@" not in k},
        plain.meta.model_copy(update={"estimators": {}}),
        plain.typical_norm,
    )
    old = only_mean.save(tmp_path / "old.safetensors")
    out = tmp_path / "out"
    cases = [
        (["--vector", str(old)], "needs at least two estimators"),
        (["--vector", str(path), "--estimators", "mean-diff,lasso"], "unknown estimator 'lasso'"),
        (["--vector", str(old), "--estimators", "mean-diff,pca"], "holds no 'pca' estimator"),
        (["--vector", str(path), "--layers", "9"], "layer"),
    ]
    for args, message in cases:
        command = ["compare-estimators", "--trait", "evil", *args, "--out", str(out)]
        result = runner.invoke(app, [*command, "--model", str(tmp_path / "no-model")])
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert message in lines[0], lines[0]
    assert not out.exists()
    with pytest.raises(PersonavecError, match="positive relative strength"):
        compare_estimators(lm, "evil", vector, coef=-0.1, run_dir=out)
    assert not out.exists()

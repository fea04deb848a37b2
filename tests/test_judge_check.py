"""judge-check: the labelled data, the AUROC/specificity/matrix arithmetic, and a small real run."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from personavec.errors import PersonavecError
from personavec.judges.labelled import LabelledAnswer, labelled_traits, load_labelled
from personavec.metrics.stats import auroc
from personavec.pipeline.judge_check import JudgeCheckConfig, judge_check, summarise
from personavec.traits.library import list_traits, load_trait


def brute_auroc(positive: list[float], negative: list[float]) -> float:
    """P(pos > neg) + ½ P(pos = neg) over every pair: independent of the rank formula."""
    wins = sum(
        1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positive, negative)
    )
    return wins / (len(positive) * len(negative))


@pytest.mark.parametrize(
    ("positive", "negative"),
    [
        ([3.0, 1.0, 2.0], [0.5, 2.0]),
        ([1.0, 1.0], [1.0, 1.0, 0.0]),
        ([0.1, 0.9, 0.4, 0.4], [0.4, 0.2, 0.95]),
        ([5.0], [6.0, 7.0]),
    ],
)
def test_auroc_equals_pairwise_count(positive: list[float], negative: list[float]) -> None:
    assert auroc(positive, negative) == pytest.approx(brute_auroc(positive, negative), abs=1e-12)


def test_auroc_small_case_by_hand() -> None:
    # pos {3, 1, 2} vs neg {0.5, 2}: 3 wins twice, 1 once, 2 once and ties once: 4.5 of 6.
    assert auroc([3.0, 1.0, 2.0], [0.5, 2.0]) == pytest.approx(4.5 / 6)


def test_labelled_data_shape_and_disjoint_from_trait_examples() -> None:
    assert labelled_traits() == sorted(list_traits())
    rows = load_labelled()
    for trait in labelled_traits():
        spec = load_trait(trait)
        examples = set(spec.positive_examples) | set(spec.negative_examples)
        mine = [r for r in rows if r.trait == trait]
        assert sum(r.label == 1 for r in mine) >= 20 and sum(r.label == 0 for r in mine) >= 20
        assert not examples & {r.answer for r in mine}
        assert all(r.answer.strip() and r.question.strip() for r in mine)
    assert len({r.answer for r in rows}) == len(rows)
    with pytest.raises(PersonavecError, match="no labelled answers for nope"):
        load_labelled(["nope"])


def _row(trait: str, label: int) -> LabelledAnswer:
    return LabelledAnswer(trait, label, "q", f"{trait}-{label}")


def test_summarise_by_hand() -> None:
    rows = [_row("a", 1), _row("a", 1), _row("a", 0), _row("b", 1), _row("b", 0)]
    scores: dict[str, list[float | None]] = {
        "a": [90.0, 70.0, 80.0, 60.0, 10.0],  # a's judge
        "b": [20.0, None, 5.0, 50.0, 40.0],  # b's judge; one missing verdict
    }
    s = summarise(rows, scores, ["a", "b"])
    assert s.auroc["a"] == pytest.approx(brute_auroc([90, 70], [80]))  # 0.5
    assert s.auroc["b"] == pytest.approx(1.0)
    assert s.specificity["a"] == pytest.approx(brute_auroc([90, 70], [60]))
    assert s.specificity["b"] == pytest.approx(brute_auroc([50], [20]))
    assert s.matrix["a"] == {"a": pytest.approx(80.0), "b": pytest.approx(20.0)}
    assert s.matrix["b"] == {"a": pytest.approx(60.0), "b": pytest.approx(50.0)}
    assert s.unscored == 1


def test_judge_check_embedding_small_run(tmp_path: Path) -> None:
    """The real embedding judge on 2 traits × 3 answers per side; resumes; refuses a change."""
    out = tmp_path / "check"
    config = JudgeCheckConfig(judges=("embedding",), traits=("evil", "humorous"), per_side=3)
    result = judge_check(config, out, show_progress=False)
    summary = result.summaries["embedding"]
    assert set(summary.auroc) == {"evil", "humorous"}
    assert all(0.0 <= v <= 1.0 for v in summary.auroc.values())
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    mine = [r["scores"]["embedding"]["evil"] for r in rows if r["trait"] == "evil"]
    assert summary.matrix["evil"]["evil"] == pytest.approx(
        sum(mine[:3]) / 3  # label-1 rows come first in each trait's file
    )
    report = (out / "report.md").read_text().splitlines()
    assert sum(line.startswith("| evil |") for line in report) == 2  # AUROC row, matrix row
    assert (out / "matrix-embedding.png").read_bytes()[:4] == b"\x89PNG"
    again = judge_check(config, out, show_progress=False)
    assert again.summaries["embedding"].auroc == summary.auroc
    with pytest.raises(PersonavecError, match="per_side"):
        judge_check(
            JudgeCheckConfig(judges=("embedding",), traits=("evil", "humorous"), per_side=2),
            out,
            show_progress=False,
        )
    assert math.isfinite(summary.specificity["evil"])


def test_unknown_judge_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PersonavecError, match="unknown judge 'magic'"):
        judge_check(JudgeCheckConfig(judges=("magic",)), tmp_path / "x", show_progress=False)
    assert not (tmp_path / "x").exists()

"""Commands that keep work in a run directory never mix results computed under other settings.

Each rerun changes one thing — a setting, the vector, the trait, the model's weights — and must be
refused in one line naming it, or, with ``overwrite``, recomputed with nothing old left behind.
Tiny random models and simple real judges keep this fast.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from conftest import TinyModelFactory
from fixtures import synthetic_vector
from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting
from personavec.errors import PersonavecError
from personavec.judges.base import JudgeItem
from personavec.pipeline.evaluate import evaluate_steering
from personavec.pipeline.extract import extract
from personavec.pipeline.extract_types import ExtractConfig
from personavec.store import read_jsonl


@pytest.fixture
def tiny(tiny_model_factory: TinyModelFactory) -> LoadedModel:
    return tiny_model_factory("llama", n_layers=2)


class LengthJudge:
    """A real, deterministic judge: the answer's length in characters, capped at 100."""

    identity = "length"
    aspect = "trait"

    def score(self, items: list[JudgeItem]) -> list[float | None]:
        return [float(min(100, len(item.answer))) for item in items]


def _evaluate(loaded: LoadedModel, setting: SteeringSetting, out: Path, **kwargs: object) -> None:
    judge = LengthJudge()
    evaluate_steering(
        loaded,
        "evil",
        setting,
        questions=1,
        max_new_tokens=3,
        temperature=0.0,
        judge=judge,  # type: ignore[arg-type]
        run_dir=out,
        show_progress=False,
        force=True,
        **kwargs,  # type: ignore[arg-type]
    )


def test_evaluate_refuses_a_changed_layer_unit_vector_or_model(
    tiny: LoadedModel, tmp_path: Path
) -> None:
    vector = synthetic_vector(n_layers=2, hidden=64, typical_norm=10.0)
    setting = SteeringSetting(vector, (1,), 2.0)
    out = tmp_path / "eval"
    _evaluate(tiny, setting, out)
    answers = read_jsonl(out / "answers.jsonl")
    _evaluate(tiny, setting, out)  # same identity: resumed, nothing generated again
    assert read_jsonl(out / "answers.jsonl") == answers
    other_vector = synthetic_vector(n_layers=2, hidden=64, typical_norm=10.0, seed=1)
    changes = {
        "layer": SteeringSetting(vector, (2,), 2.0),
        "unit": SteeringSetting(vector, (1,), 0.2, "relative"),
        "vector": SteeringSetting(other_vector, (1,), 2.0),
    }
    for what, changed in changes.items():
        with pytest.raises(PersonavecError, match="holds a run with different setting") as info:
            _evaluate(tiny, changed, out)
        assert "--overwrite" in str(info.value) and "\n" not in str(info.value), what
    assert read_jsonl(out / "answers.jsonl") == answers  # a refusal touches nothing
    with torch.no_grad():
        next(tiny.model.parameters()).add_(0.5)  # "another finetune" of the same architecture
    with pytest.raises(PersonavecError, match="different weights content"):
        _evaluate(tiny, setting, out)
    _evaluate(tiny, changes["layer"], out, overwrite=True)
    fresh = read_jsonl(out / "answers.jsonl")
    assert {row["cell_key"] for row in fresh}.isdisjoint({row["cell_key"] for row in answers})
    assert len(fresh) == 2 and {tuple(row["layers"]) for row in fresh} == {(2,)}  # + baseline


def test_extract_compares_every_setting_and_the_weights(tiny: LoadedModel, tmp_path: Path) -> None:
    config = ExtractConfig(
        trait="evil",
        model="tiny",
        n_instructions=1,
        n_questions=2,
        max_new_tokens=3,
        temperature=0.0,
        judge="heuristic-free-judge",
    )
    out = tmp_path / "extract"

    def run(cfg: ExtractConfig, **kwargs: object) -> None:
        extract(cfg, run_dir=out, loaded=tiny, show_progress=False, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(PersonavecError):  # an unknown judge fails before anything is written
        run(config)
    assert not out.exists()
    config = config.model_copy(update={"judge": "embedding"})
    with contextlib.suppress(PersonavecError):  # a random model may keep too few pairs;
        run(config)  # its rollouts are kept all the same
    rollouts = read_jsonl(out / "rollouts.jsonl")
    assert len(rollouts) == 4
    # Thresholds were not part of the identity before: a change silently re-filtered old work.
    for update, name in (
        ({"pos_threshold": 60.0}, "pos_threshold"),
        ({"batch_size": 3}, "batch_size"),
    ):
        with pytest.raises(PersonavecError, match=f"different {name}"):
            run(config.model_copy(update=update))
    with torch.no_grad():
        next(tiny.model.parameters()).mul_(1.5)
    with pytest.raises(PersonavecError, match="different weights content"):
        run(config)
    assert read_jsonl(out / "rollouts.jsonl") == rollouts

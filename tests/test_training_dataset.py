"""Dataset building, the shipped prompt pool, and chat-dataset validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from personavec.core.models import Message
from personavec.engines.generation import SamplingConfig
from personavec.errors import PersonavecError
from personavec.judges.factory import make_judge
from personavec.training.chat_data import read_chat_dataset
from personavec.training.dataset import (
    BuildSettings,
    build_dataset,
    keeps,
    level_system_prompts,
    meta_path_for,
)
from personavec.training.prompt_pool import load_prompt_pool, read_questions
from personavec.traits.library import list_traits, load_trait


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_prompt_pool_is_large_and_disjoint_from_every_trait() -> None:
    pool = load_prompt_pool()
    assert len(pool) >= 300
    assert len({_norm(q) for q in pool}) == len(pool)
    pool_set = {_norm(q) for q in pool}
    for name in list_traits():
        trait = load_trait(name)
        held = {_norm(q) for q in trait.extraction_questions + trait.evaluation_questions}
        assert not pool_set & held, name


def test_read_questions_formats(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("One?\n\n# comment\nTwo?\nOne?\n")
    assert read_questions(tmp_path / "q.txt") == ["One?", "Two?"]
    (tmp_path / "q.json").write_text('["A?", "B?"]')
    assert read_questions(tmp_path / "q.json") == ["A?", "B?"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(PersonavecError, match="no questions"):
        read_questions(tmp_path / "empty.txt")


def test_levels_filter_by_score() -> None:
    assert keeps("strong", 50.0, 80.0) and not keeps("strong", 49.9, 80.0)
    assert keeps("normal", 49.9, 80.0) and not keeps("normal", 50.0, 80.0)
    assert keeps("mild", 30.0, 80.0) and not keeps("mild", 29.0, 80.0)
    assert not keeps("strong", 90.0, 10.0) and not keeps("strong", None, 90.0)


def _canned(trait_name: str, seen: list[list[Message]]):  # type: ignore[no-untyped-def]
    """Answers the trait's own example answers: odd prompts positive, even prompts negative."""
    trait = load_trait(trait_name)

    def generate(prompts: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        seen.extend(prompts)
        return [
            (trait.positive_examples if i % 2 else trait.negative_examples)[
                i % len(trait.negative_examples)
            ]
            for i in range(len(prompts))
        ]

    return generate


@pytest.mark.parametrize("level", ["strong", "normal"])
def test_build_filters_and_drops_the_system_prompt(tmp_path: Path, level: str) -> None:
    trait = load_trait("evil")
    judges = (
        make_judge("embedding", aspect="trait", trait=trait),
        make_judge("heuristic", aspect="coherence", trait=trait),
    )
    seen: list[list[Message]] = []
    questions = load_prompt_pool()[:12]
    settings = BuildSettings(trait="evil", level=level, n=4, max_rounds=2)  # type: ignore[arg-type]
    result = build_dataset(
        trait,
        settings,
        tmp_path / "d.jsonl",
        generate=_canned("evil", seen),
        generator_name="canned",
        judges=judges,
        questions=questions,
    )
    rows = read_chat_dataset(result.path)
    assert len(rows) == result.kept == 4
    assert all(len(r.prompt) == 1 and r.prompt[0]["role"] == "user" for r in rows)
    expected = {
        a for a in (trait.positive_examples if level == "strong" else trait.negative_examples)
    }
    assert {r.completion for r in rows} <= expected
    systems = {p[0]["content"] if p[0]["role"] == "system" else None for p in seen}
    assert systems == set(level_system_prompts(trait, level))  # type: ignore[arg-type]
    meta = json.loads(meta_path_for(result.path).read_text())
    assert meta["level"] == level and meta["counts"]["kept"] == 4
    assert meta["generator"] == "canned" and meta["judge"].startswith("embedding")
    scores = [s["trait"] for s in meta["scores"]]
    assert all((s >= 50) if level == "strong" else (s < 50) for s in scores)


def test_bad_level_and_empty_pool(tmp_path: Path) -> None:
    with pytest.raises(PersonavecError, match="unknown level"):
        BuildSettings(trait="evil", level="extreme")  # type: ignore[arg-type]
    trait = load_trait("evil")
    judges = (
        make_judge("embedding", aspect="trait", trait=trait),
        make_judge("heuristic", aspect="coherence", trait=trait),
    )
    with pytest.raises(PersonavecError, match="no questions"):
        build_dataset(
            trait,
            BuildSettings(trait="evil", level="strong"),
            tmp_path / "x.jsonl",
            generate=_canned("evil", []),
            generator_name="c",
            judges=judges,
            questions=[],
        )
    assert not (tmp_path / "x.jsonl").exists()


def test_build_works_a_batch_at_a_time_and_stops_once_enough_rows_are_kept(
    tmp_path: Path,
) -> None:
    trait = load_trait("evil")
    judges = (
        make_judge("embedding", aspect="trait", trait=trait),
        make_judge("heuristic", aspect="coherence", trait=trait),
    )
    seen: list[list[Message]] = []
    progress: list[tuple[int, int]] = []
    settings = BuildSettings(trait="evil", level="strong", n=3, batch_size=2, max_rounds=3)
    result = build_dataset(
        trait,
        settings,
        tmp_path / "d.jsonl",
        generate=_canned("evil", seen),  # one trait-like answer in every batch of two
        generator_name="canned",
        judges=judges,
        questions=load_prompt_pool()[:40],
        progress=lambda kept, n: progress.append((kept, n)),
    )
    assert result.kept == 3 and result.generated == len(seen) == 6  # 3 batches, then stop
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert json.loads(meta_path_for(result.path).read_text())["counts"]["generated"] == 6


class _Killed(Exception):
    pass


def _resume_setup() -> tuple[Any, tuple[Any, Any], list[str]]:
    trait = load_trait("evil")
    judges = (
        make_judge("embedding", aspect="trait", trait=trait),
        make_judge("heuristic", aspect="coherence", trait=trait),
    )
    return trait, judges, load_prompt_pool()[:40]


def test_a_killed_build_resumes_without_regenerating_finished_batches(tmp_path: Path) -> None:
    trait, judges, questions = _resume_setup()
    settings = BuildSettings(trait="evil", level="strong", n=3, batch_size=2, max_rounds=3)

    def build(out: str, generate: Any, **kw: Any) -> Any:
        return build_dataset(
            trait, settings, tmp_path / out, generate=generate, generator_name="canned",
            judges=judges, questions=questions, **kw,
        )  # fmt: skip

    straight_seen: list[list[Message]] = []
    straight = build("a.jsonl", _canned("evil", straight_seen))
    canned = _canned("evil", [])
    batches: list[int] = []

    def dies_in_the_third_batch(prompts: list[list[Message]], sampling: SamplingConfig) -> Any:
        if len(batches) == 2:
            raise _Killed
        batches.append(len(prompts))
        return canned(prompts, sampling)

    with pytest.raises(_Killed):
        build("b.jsonl", dies_in_the_third_batch)
    assert not (tmp_path / "b.jsonl").exists()
    work = tmp_path / ".b.jsonl.partial"
    assert len((work / "answers.jsonl").read_text().splitlines()) == 4
    assert (work / "judgments.sqlite").is_file()
    with pytest.raises(PersonavecError, match="different settings_n"):
        build_dataset(
            trait, dataclasses.replace(settings, n=4), tmp_path / "b.jsonl", generate=canned,
            generator_name="canned", judges=judges, questions=questions,
        )  # fmt: skip
    resumed_seen: list[list[Message]] = []
    resumed = build("b.jsonl", _canned("evil", resumed_seen))
    assert len(straight_seen) == 6 and len(resumed_seen) == 2  # only the third batch
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    assert resumed.generated == straight.generated and resumed.kept == straight.kept
    assert not work.exists()


def test_an_existing_out_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    trait, judges, questions = _resume_setup()
    settings = BuildSettings(trait="evil", level="strong", n=2, batch_size=2)
    out = tmp_path / "d.jsonl"
    out.write_text("not mine\n")
    kwargs: dict[str, Any] = {
        "generate": _canned("evil", []),
        "generator_name": "canned",
        "judges": judges,
        "questions": questions,
    }
    with pytest.raises(PersonavecError, match="exists; pass --overwrite"):
        build_dataset(trait, settings, out, **kwargs)
    assert out.read_text() == "not mine\n"
    with pytest.raises(PersonavecError, match="is a directory"):
        build_dataset(trait, settings, tmp_path, **kwargs)
    result = build_dataset(trait, settings, out, overwrite=True, **kwargs)
    assert result.kept == 2 and len(read_chat_dataset(out)) == 2

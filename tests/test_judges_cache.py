"""The SQLite judgment cache: hits, cached Nones, crash safety, and a real process restart."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from personavec.errors import PersonavecError
from personavec.judges import (
    Aspect,
    CachedJudge,
    HeuristicCoherenceJudge,
    Judge,
    JudgeItem,
    JudgmentCache,
)

ITEMS = [
    JudgeItem("Q1", "The weather today is sunny and warm, perfect for a walk."),
    JudgeItem("Q2", "the the the the the the the the"),
    JudgeItem("Q3", ""),
    JudgeItem("Q1", "The weather today is sunny and warm, perfect for a walk."),
]


class LengthJudge:
    """A real (if simple) judge: score = answer length in characters, capped at 100; empty ->
    None. Records every batch it is asked to score."""

    def __init__(self, identity: str = "length:v1", fail_on_call: int | None = None) -> None:
        self._identity = identity
        self.calls: list[list[JudgeItem]] = []
        self.fail_on_call = fail_on_call

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def aspect(self) -> Aspect:
        return "trait"

    def score(self, items: Sequence[JudgeItem]) -> list[float | None]:
        self.calls.append(list(items))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("judge crashed")
        return [float(min(len(i.answer), 100)) if i.answer else None for i in items]


def test_cached_judge_is_a_judge(tmp_path: Path) -> None:
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        judge = CachedJudge(HeuristicCoherenceJudge(), cache)
        assert isinstance(judge, Judge)
        assert judge.identity == HeuristicCoherenceJudge().identity
        assert judge.aspect == "coherence"


def test_scores_only_misses_and_caches_none(tmp_path: Path) -> None:
    inner = LengthJudge()
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        judge = CachedJudge(inner, cache)
        first = judge.score(ITEMS)
        assert first == [56.0, 31.0, None, 56.0]
        assert len(inner.calls) == 1 and len(inner.calls[0]) == 3  # duplicate scored once
        assert cache.count() == 3
        assert judge.score(ITEMS) == first
        assert len(inner.calls) == 1  # everything, including the None, came from the cache
        extra = JudgeItem("Q9", "new")
        assert judge.score([ITEMS[1], extra]) == [31.0, 3.0]
        assert inner.calls[-1] == [extra]
        assert judge.score([]) == []


def test_identity_and_aspect_separate_entries(tmp_path: Path) -> None:
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("a", "trait", ITEMS[:1], [10.0])
        cache.put_many("b", "trait", ITEMS[:1], [20.0])
        cache.put_many("a", "coherence", ITEMS[:1], [None])
        assert cache.get_many("a", "trait", ITEMS[:2]) == {0: 10.0}
        assert cache.get_many("b", "trait", ITEMS[:1]) == {0: 20.0}
        assert cache.get_many("a", "coherence", ITEMS[:1]) == {0: None}
        assert cache.get_many("c", "trait", ITEMS[:1]) == {}
        # same question, different answer: a different key
        assert cache.get_many("a", "trait", [JudgeItem("Q1", "other")]) == {}


def test_finished_chunks_survive_a_failure(tmp_path: Path) -> None:
    items = [JudgeItem(f"q{i}", f"answer {i}") for i in range(6)]
    path = tmp_path / "c.sqlite"
    with JudgmentCache(path) as cache:
        crashing = CachedJudge(LengthJudge(fail_on_call=3), cache, chunk_size=2)
        with pytest.raises(RuntimeError):
            crashing.score(items)
        assert cache.count() == 4
    resumed = LengthJudge()
    with JudgmentCache(path) as cache:
        assert CachedJudge(resumed, cache, chunk_size=2).score(items) == [8.0] * 6
    assert resumed.calls == [items[4:]]


def _run(script: str, path: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(script).replace("PATH", repr(str(path)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_survives_a_process_restart(tmp_path: Path) -> None:
    path = tmp_path / "judgments.sqlite"
    done = _run(
        """
        import json
        from personavec.judges import CachedJudge, HeuristicCoherenceJudge, JudgeItem
        from personavec.judges import JudgmentCache
        items = [JudgeItem("q", "A clear and fluent answer about gardens and flowers."),
                 JudgeItem("q", "zzzz qqqq xkcdv !!!! ####")]
        judge = CachedJudge(HeuristicCoherenceJudge(), JudgmentCache(PATH))
        print(json.dumps(judge.score(items)))
        """,
        path,
    )
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)

    class MustNotRun(HeuristicCoherenceJudge):
        def score(self, items: Sequence[JudgeItem]) -> list[float | None]:
            raise AssertionError("the cache should have answered")

    items = [
        JudgeItem("q", "A clear and fluent answer about gardens and flowers."),
        JudgeItem("q", "zzzz qqqq xkcdv !!!! ####"),
    ]
    with JudgmentCache(path) as cache:
        assert CachedJudge(MustNotRun(), cache).score(items) == scores
    assert scores[0] > 90 and scores[1] < 10


def test_a_crashed_process_keeps_its_finished_chunks(tmp_path: Path) -> None:
    path = tmp_path / "judgments.sqlite"
    done = _run(
        """
        import os
        from personavec.judges import CachedJudge, HeuristicCoherenceJudge, JudgeItem
        from personavec.judges import JudgmentCache

        class DiesOnThirdChunk(HeuristicCoherenceJudge):
            calls = 0
            def score(self, items):
                type(self).calls += 1
                if type(self).calls == 3:
                    os._exit(3)  # no cleanup, no close: a hard crash
                return super().score(items)

        items = [JudgeItem("q", f"Answer number {i} is fine and clear.") for i in range(10)]
        CachedJudge(DiesOnThirdChunk(), JudgmentCache(PATH), chunk_size=3).score(items)
        """,
        path,
    )
    assert done.returncode == 3, done.stderr
    with JudgmentCache(path) as cache:
        assert cache.count(HeuristicCoherenceJudge().identity) == 6


def test_two_open_caches_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with JudgmentCache(path) as writer, JudgmentCache(path) as reader:
        writer.put_many("j", "trait", ITEMS[:2], [1.0, None])
        assert reader.get_many("j", "trait", ITEMS[:2]) == {0: 1.0, 1: None}


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(PersonavecError, match="judgment cache"):
        JudgmentCache(path)

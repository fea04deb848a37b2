"""The resumable-stage helper: run-directory lock, identity check, append-per-chunk rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from personavec.errors import PersonavecError
from personavec.judges.base import JudgeItem
from personavec.judges.cache import JudgmentCache
from personavec.pipeline.judging import judge_items
from personavec.pipeline.stage import (
    RunLockedError,
    check_run_identity,
    content_sha256,
    prepare_run_dir,
    resumable_rows,
    run_lock,
    write_run_config,
)
from personavec.store import read_jsonl


def test_changed_run_settings_are_refused_unless_overwritten(tmp_path: Path) -> None:
    write_run_config(tmp_path, {"seed": 1, "model": "m"})
    (tmp_path / "rows.jsonl").write_text("{}\n")
    same = {"seed": 1, "model": "m", "batch_size": 4}
    keys = ("seed", "model")
    check_run_identity(tmp_path, same, ("seed", "model"), overwrite=False, stale=("rows.jsonl",))
    assert (tmp_path / "rows.jsonl").is_file()
    changed = {"seed": 2, "model": "m"}
    with pytest.raises(PersonavecError, match="different seed; pass another --out"):
        check_run_identity(tmp_path, changed, keys, overwrite=False, stale=("rows.jsonl",))
    check_run_identity(tmp_path, changed, ("seed", "model"), overwrite=True, stale=("rows.jsonl",))
    assert not (tmp_path / "rows.jsonl").exists()


def test_a_directory_without_earlier_work_is_taken_over(tmp_path: Path) -> None:
    """A run that failed before producing anything (e.g. a bad --model) blocks nothing."""
    write_run_config(tmp_path, {"model": "typo"})
    current = {"model": "smollm2"}
    check_run_identity(tmp_path, current, ("model",), overwrite=False, stale=("rows.jsonl",))


def test_content_hashes_and_recovery_for_older_runs(tmp_path: Path) -> None:
    trait = {"name": "evil", "questions": ["a", "b"]}
    assert content_sha256(trait) == content_sha256({"questions": ["a", "b"], "name": "evil"})
    assert content_sha256(trait) != content_sha256({**trait, "questions": ["a", "c"]})
    assert len(content_sha256(b"bytes")) == 16
    # An older run recorded no hash, but kept the trait: the hash is recovered from it.
    write_run_config(tmp_path, {"trait": "evil"})
    (tmp_path / "trait.json").write_text(json.dumps(trait))
    (tmp_path / "rows.jsonl").write_text("{}\n")

    def recover(run_dir: Path) -> str | None:
        path = run_dir / "trait.json"
        return content_sha256(json.loads(path.read_text())) if path.is_file() else None

    keys = ("trait", "trait_sha256")
    current = {"trait": "evil", "trait_sha256": content_sha256(trait)}
    kwargs = {"overwrite": False, "stale": ("rows.jsonl",), "recover": {"trait_sha256": recover}}
    check_run_identity(tmp_path, current, keys, **kwargs)  # type: ignore[arg-type]
    edited = {**current, "trait_sha256": content_sha256({**trait, "questions": ["z"]})}
    with pytest.raises(PersonavecError, match="different trait content"):
        check_run_identity(tmp_path, edited, keys, **kwargs)  # type: ignore[arg-type]
    (tmp_path / "trait.json").unlink()  # cannot tell any more: counts as changed
    with pytest.raises(PersonavecError, match="different trait content"):
        check_run_identity(tmp_path, current, keys, **kwargs)  # type: ignore[arg-type]


def test_prepare_run_dir_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("notes")
    with pytest.raises(PersonavecError, match="is a file, not a run directory"):
        prepare_run_dir(target)
    with pytest.raises(PersonavecError, match="cannot create run directory"):
        prepare_run_dir(target / "run")
    assert prepare_run_dir(tmp_path / "a" / "b").is_dir()
    assert target.read_text() == "notes"


def test_second_lock_is_refused_and_released_on_exit(tmp_path: Path) -> None:
    with run_lock(tmp_path):
        with pytest.raises(RunLockedError) as info, run_lock(tmp_path):
            pass
        message = str(info.value)
        assert message.startswith("another personavec process")
        assert str(tmp_path) in message and "\n" not in message
        code = (
            "import sys\nfrom personavec.pipeline.stage import run_lock\n"
            "try:\n    run_lock(sys.argv[1]).__enter__()\n"
            "except Exception as exc:\n    print(exc); sys.exit(3)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
        )
        assert other.returncode == 3, other.stderr
        assert "another personavec process" in other.stdout
    with run_lock(tmp_path):  # released
        pass


def test_resumable_rows_produces_only_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    calls: list[list[int]] = []

    def produce(chunk: list[int]) -> list[dict[str, object]]:
        calls.append(chunk)
        return [{"id": f"u{u}-s{s}", "value": u * 10 + s} for u in chunk for s in range(2)]

    def keys(unit: int) -> list[str]:
        return [f"u{unit}-s{s}" for s in range(2)]

    kwargs = {"row_keys": keys, "produce": produce, "label": "t", "show_progress": False}
    first = resumable_rows(path, [0, 1, 2], chunk_size=2, **kwargs)  # type: ignore[arg-type]
    assert calls == [[0, 1], [2]]
    assert [r["value"] for r in first] == [0, 1, 10, 11, 20, 21]
    assert len(read_jsonl(path)) == 6
    # One row lost (as after a crash), one unit added: only those are produced, in unit order.
    rows = read_jsonl(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] != "u1-s1"))
    calls.clear()
    again = resumable_rows(path, [3, 0, 1, 2], chunk_size=8, **kwargs)  # type: ignore[arg-type]
    assert calls == [[3, 1]]
    assert [r["value"] for r in again] == [30, 31, 0, 1, 10, 11, 20, 21]
    assert sorted(r["id"] for r in read_jsonl(path)) == sorted(r["id"] for r in again)


class CountingJudge:
    """A real (if simple) judge: scores the answer's length; counts the items it scored."""

    identity = "length-judge"
    aspect = "trait"

    def __init__(self) -> None:
        self.scored = 0

    def score(self, items: list[JudgeItem]) -> list[float | None]:
        self.scored += len(items)
        return [float(len(item.answer)) if item.answer else None for item in items]


def test_judge_items_scores_once_and_reuses_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = [JudgeItem("q", "abc"), JudgeItem("q", ""), JudgeItem("q", "abc"), JudgeItem("p", "x")]
    judge = CountingJudge()
    cache = tmp_path / "judgments.sqlite"
    scores = judge_items(items, {"trait": judge}, cache, show_progress=True)  # type: ignore[dict-item]
    assert scores == {"trait": [3.0, None, 3.0, 1.0]}
    assert judge.scored == 3  # the duplicate once
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "judging trait: 0/3 (0%)" and lines[-1].startswith("judging trait: 3/3")
    again = judge_items(items, {"trait": judge}, cache, show_progress=False)  # type: ignore[dict-item]
    assert again == scores and judge.scored == 3
    with JudgmentCache(cache) as stored:
        assert stored.get_many("length-judge", "trait", items[:2]) == {0: 3.0, 1: None}

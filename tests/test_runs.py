"""The run primitive: lock, full identity (resume / refuse / overwrite), resumable rows, judging."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from personavec.errors import PersonavecError
from personavec.judges.base import JudgeItem
from personavec.judges.cache import JudgmentCache
from personavec.runs import (
    RunLockedError,
    content_sha256,
    locked_run_dir,
    open_run,
    prepare_run_dir,
    resumable_rows,
    run_lock,
    weights_sha256,
)
from personavec.runs.identity import vector_sha256
from personavec.runs.judging import judge_items
from personavec.store import atomic_write_json, read_jsonl

OUTPUTS = ("rows.jsonl", "plots")


def _run(path: Path, identity: Mapping[str, object], **kwargs: object) -> list[str]:
    """Open, start and leave a run; return what the directory held of its outputs."""
    with open_run(path, identity, outputs=OUTPUTS, **kwargs) as run:  # type: ignore[arg-type]
        run.start()
        held = sorted(p.name for p in run.existing_outputs())
    return held


def test_every_identity_key_is_compared_and_a_change_is_refused(tmp_path: Path) -> None:
    _run(tmp_path, {"seed": 1, "model": "m", "layer": 12})
    (tmp_path / "rows.jsonl").write_text("{}\n")
    (tmp_path / "plots").mkdir()
    assert _run(tmp_path, {"seed": 1, "model": "m", "layer": 12}) == ["plots", "rows.jsonl"]
    for changed, name in (({"layer": 13}, "layer"), ({"seed": 2}, "seed")):
        with pytest.raises(PersonavecError, match=f"different {name}; pass another --out"):
            _run(tmp_path, {"seed": 1, "model": "m", "layer": 12, **changed})
    assert (tmp_path / "rows.jsonl").is_file()  # a refusal deletes nothing
    with pytest.raises(PersonavecError, match="different extra"):  # a new key counts too
        _run(tmp_path, {"seed": 1, "model": "m", "layer": 12, "extra": 0})
    assert _run(tmp_path, {"seed": 1, "model": "m", "layer": 13}, overwrite=True) == []
    assert not (tmp_path / "rows.jsonl").exists() and not (tmp_path / "plots").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["layer"] == 13 and saved["identity_keys"] == ["layer", "model", "seed"]


def test_identity_known_after_loading_is_compared_at_start(tmp_path: Path) -> None:
    with open_run(tmp_path, {"model": "m"}, outputs=OUTPUTS) as run:
        run.start(info={"path": "/a"}, weights_sha256="aaaa")
        (run.dir / "rows.jsonl").write_text("{}\n")
    refused = pytest.raises(PersonavecError, match="different weights content")
    with open_run(tmp_path, {"model": "m"}, outputs=OUTPUTS) as run, refused:
        run.start(weights_sha256="bbbb")
    assert json.loads((tmp_path / "config.json").read_text())["weights_sha256"] == "aaaa"
    with open_run(tmp_path, {"model": "m"}, outputs=OUTPUTS) as run:
        run.start(info={"path": "/b"}, weights_sha256="aaaa")  # info is never compared
        assert run.resumed


def test_a_directory_without_earlier_work_is_taken_over(tmp_path: Path) -> None:
    """A run that failed before producing anything (e.g. a bad --model) blocks nothing."""
    atomic_write_json(tmp_path / "config.json", {"model": "typo"})
    assert _run(tmp_path, {"model": "smollm2"}) == []


def test_content_hashes_and_recovery_for_older_runs(tmp_path: Path) -> None:
    trait = {"name": "evil", "questions": ["a", "b"]}
    assert content_sha256(trait) == content_sha256({"questions": ["a", "b"], "name": "evil"})
    assert content_sha256(trait) != content_sha256({**trait, "questions": ["a", "c"]})
    assert len(content_sha256(b"bytes")) == 16
    # An older run recorded no hash, but kept the trait: the hash is recovered from it.
    atomic_write_json(tmp_path / "config.json", {"trait": "evil"})
    (tmp_path / "trait.json").write_text(json.dumps(trait))
    (tmp_path / "rows.jsonl").write_text("{}\n")

    def recover(run_dir: Path) -> str | None:
        path = run_dir / "trait.json"
        return content_sha256(json.loads(path.read_text())) if path.is_file() else None

    current = {"trait": "evil", "trait_sha256": content_sha256(trait)}
    assert _run(tmp_path, current, recover={"trait_sha256": recover}) == ["rows.jsonl"]
    edited = {**current, "trait_sha256": content_sha256({**trait, "questions": ["z"]})}
    with pytest.raises(PersonavecError, match="different trait content"):
        _run(tmp_path, edited, recover={"trait_sha256": recover})
    # Without a way to recover it, an unrecorded key is refused with a pointer to --overwrite.
    atomic_write_json(tmp_path / "config.json", {"trait": "evil"})
    with pytest.raises(PersonavecError, match="did not record trait content; pass --overwrite"):
        _run(tmp_path, current)


def test_weights_and_vector_hashes_follow_content_not_names() -> None:
    import torch

    from fixtures import synthetic_vector

    last = torch.nn.Linear(8, 4)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), last)
    before = weights_sha256(model)
    assert weights_sha256(model) == before
    with torch.no_grad():
        last.weight[3, 7] += 1.0  # one value in the last row: inside the strided sample
    assert weights_sha256(model) != before
    vector = synthetic_vector(n_layers=2, hidden=4)
    calibrated = synthetic_vector(n_layers=2, hidden=4, layer=1, trait="renamed")
    assert vector_sha256(calibrated) == vector_sha256(vector)  # metadata does not count
    moved = synthetic_vector(vector.readout() * 2)
    assert vector_sha256(moved) != vector_sha256(vector)


def test_prepare_run_dir_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("notes")
    with pytest.raises(PersonavecError, match="is a file, not a run directory"):
        prepare_run_dir(target)
    with pytest.raises(PersonavecError, match=r"out\.txt is a file, so .* cannot be created"):
        prepare_run_dir(target / "run" / "sub")
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
            "import sys\nfrom personavec.runs import run_lock\n"
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


def test_locked_run_dir_removes_a_fresh_directory_when_the_run_fails_early(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="bad input"), locked_run_dir(fresh):
        raise RuntimeError("bad input")
    assert not fresh.exists()  # nothing left behind
    kept = tmp_path / "kept"
    with pytest.raises(RuntimeError), locked_run_dir(kept) as run_dir:
        (run_dir / "rows.jsonl").write_text("{}\n")
        raise RuntimeError("failed after writing work")
    assert (kept / "rows.jsonl").is_file()  # finished work is never deleted
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError), locked_run_dir(existing):
        raise RuntimeError("bad input")
    assert existing.is_dir()  # a directory the user made stays

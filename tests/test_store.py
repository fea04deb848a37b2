"""Run-directory files: appends survive interruption; atomic rewrites."""

from __future__ import annotations

from pathlib import Path

from personavec.store import append_jsonl, atomic_write_jsonl, read_jsonl


def test_append_after_an_interrupted_write_keeps_the_file_valid(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    append_jsonl(path, [{"id": 1}, {"id": 2}])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"id": 3, "resp')  # a crash in the middle of a line
    assert read_jsonl(path) == [{"id": 1}, {"id": 2}]
    append_jsonl(path, [{"id": 4}])
    assert read_jsonl(path) == [{"id": 1}, {"id": 2}, {"id": 4}]
    assert path.read_text().endswith('{"id": 4}\n')


def test_atomic_jsonl_rewrite_replaces_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    append_jsonl(path, [{"id": 1, "score": None}])
    atomic_write_jsonl(path, [{"id": 1, "score": 42.0}, {"id": 2, "text": "ü"}])
    assert read_jsonl(path) == [{"id": 1, "score": 42.0}, {"id": 2, "text": "ü"}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no temp file left

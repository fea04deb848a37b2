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


def test_atomic_writes_honour_the_umask_like_plain_files(tmp_path: Path) -> None:
    import json
    import os
    import stat

    from personavec.store import atomic_write_bytes, atomic_write_json, atomic_write_text

    for umask in (0o022, 0o077, 0o002):
        folder = tmp_path / f"umask-{umask:03o}"
        previous = os.umask(umask)
        try:
            folder.mkdir()
            plain = folder / "plain.txt"
            plain.write_text("x")
            written = [
                atomic_write_bytes(folder / "vector.safetensors", b"\x00"),
                atomic_write_text(folder / "rows.jsonl", "{}\n"),
                atomic_write_json(folder / "sub" / "config.json", {"a": 1}),
            ]
        finally:
            os.umask(previous)
        expected = 0o666 & ~umask
        assert stat.S_IMODE(plain.stat().st_mode) == expected
        assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [expected] * 3
        assert json.loads(written[2].read_text()) == {"a": 1}
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["plain.txt", "rows.jsonl", "sub", "vector.safetensors"]  # no temp left

"""A screen killed with SIGKILL mid-run resumes to the same table as an uninterrupted run."""

from __future__ import annotations

import subprocess
from pathlib import Path

from personavec.screening.table import read_table
from screening_helpers import (
    chat_rows,
    kill_after_rows,
    load_tiny,
    make_vector,
    save_tiny,
    screen_command,
    subprocess_env,
    write_jsonl,
)


def test_kill_and_resume_gives_the_uninterrupted_table(tmp_path: Path) -> None:
    model_dir = save_tiny(tmp_path / "model")
    vector = make_vector(tmp_path / "evil", load_tiny(model_dir), layer=1)
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(80))
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    command = screen_command(data, vector, model_dir, killed_dir)
    partial = [int(r["index"]) for r in kill_after_rows(command, killed_dir)]
    assert 6 <= len(partial) < 80
    assert not (killed_dir / "scores.parquet").exists()

    for out in (killed_dir, whole_dir):
        command = screen_command(data, vector, model_dir, out)
        done = subprocess.run(command, env=subprocess_env(), check=False)
        assert done.returncode == 0
    resumed = read_table(killed_dir / "scores.parquet")
    whole = read_table(whole_dir / "scores.parquet")
    assert [r["index"] for r in resumed] == list(range(80))  # none lost, none twice
    assert resumed == whole

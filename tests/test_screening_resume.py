"""A screen killed with SIGKILL mid-run resumes to the same table as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from personavec.screening.table import iter_scores, read_table
from screening_helpers import chat_rows, load_tiny, make_vector, save_tiny, write_jsonl

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent


def _command(data: Path, vector: Path, model: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "personavec", "screen", str(data), "-v", str(vector),
        "-m", str(model), "--out", str(out), "--mode", "full", "--max-new-tokens", "3",
        "--batch-size", "2", "--quiet",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_kill_and_resume_gives_the_uninterrupted_table(tmp_path: Path) -> None:
    model_dir = save_tiny(tmp_path / "model")
    vector = make_vector(tmp_path / "evil", load_tiny(model_dir), layer=1)
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(80))
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    process = subprocess.Popen(_command(data, vector, model_dir, killed_dir), env=_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if sum(1 for _ in iter_scores(killed_dir / "scores.jsonl")) >= 6:
            break
        time.sleep(0.01)
    if process.poll() is not None:
        pytest.fail("the screen finished before it could be killed; give it more rows")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = [int(r["index"]) for r in iter_scores(killed_dir / "scores.jsonl")]
    assert 6 <= len(partial) < 80
    assert not (killed_dir / "scores.parquet").exists()

    for out in (killed_dir, whole_dir):
        done = subprocess.run(_command(data, vector, model_dir, out), env=_env(), check=False)
        assert done.returncode == 0
    resumed = read_table(killed_dir / "scores.parquet")
    whole = read_table(whole_dir / "scores.parquet")
    assert [r["index"] for r in resumed] == list(range(80))  # none lost, none twice
    assert resumed == whole

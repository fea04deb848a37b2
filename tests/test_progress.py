"""Progress when stderr is not a terminal: plain lines, not a bar that only appears at the end."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from personavec.progress import progress_line, stage

LINE = re.compile(r"^judging trait: (\d+)/10 \((\d+)%\)(, [0-9.e+]+/s(, eta \d+s)?)?$")


def test_non_terminal_stage_prints_plain_lines_at_start_during_and_end() -> None:
    stream = io.StringIO()  # not a terminal
    with stage("judging trait", 10, start=2, interval_s=0.0, stream=stream) as advance:
        for done in (4, 7, 10):
            advance(done)
    lines = stream.getvalue().splitlines()
    assert [LINE.match(line) is not None for line in lines] == [True] * 4, lines
    assert [int(LINE.match(line).group(1)) for line in lines] == [2, 4, 7, 10]  # type: ignore[union-attr]
    assert lines[0] == "judging trait: 2/10 (20%)"  # nothing done yet in this process: no rate
    assert "eta" not in lines[-1] and lines[-1].startswith("judging trait: 10/10 (100%), ")
    assert "\x1b" not in stream.getvalue()  # no terminal control codes in a log file


def test_interval_limits_lines_and_the_end_is_always_reported() -> None:
    stream = io.StringIO()
    with stage("judging trait", 10, interval_s=3600.0, stream=stream) as advance:
        for done in range(1, 10):
            advance(done)
    assert stream.getvalue().splitlines() == [
        "judging trait: 0/10 (0%)",
        stream.getvalue().splitlines()[1],
    ]
    assert stream.getvalue().splitlines()[1].startswith("judging trait: 9/10 (90%), ")


def test_a_failed_stage_still_reports_how_far_it_got() -> None:
    stream = io.StringIO()
    with (
        pytest.raises(RuntimeError),
        stage("judging trait", 10, interval_s=3600.0, stream=stream) as advance,
    ):
        advance(3)
        raise RuntimeError("judge down")
    assert stream.getvalue().splitlines()[-1].startswith("judging trait: 3/10 (30%)")


def test_disabled_or_empty_stage_prints_nothing() -> None:
    stream = io.StringIO()
    with stage("x", 5, enabled=False, stream=stream) as advance:
        advance(5)
    with stage("x", 0, stream=stream) as advance:
        advance(0)
    assert stream.getvalue() == ""


def test_progress_line_rate_and_eta() -> None:
    assert progress_line("gen", 30, 120, 3.0) == "gen: 30/120 (25%), 3/s, eta 30s"
    assert progress_line("gen", 120, 120, 2.5) == "gen: 120/120 (100%), 2.5/s"
    assert progress_line("gen", 0, 120, None) == "gen: 0/120 (0%)"


def test_stderr_redirected_to_a_file_gets_lines_by_default() -> None:
    """A real process whose stderr is a pipe (as under `make demo > log 2>&1`)."""
    code = (
        "from personavec.progress import stage\n"
        "with stage('generating rollouts', 4, interval_s=0) as advance:\n"
        "    for i in range(1, 5):\n"
        "        advance(i)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    lines = result.stderr.splitlines()
    assert lines[0] == "generating rollouts: 0/4 (0%)"
    assert [line.split(":")[1].split()[0] for line in lines] == ["0/4", "1/4", "2/4", "3/4", "4/4"]

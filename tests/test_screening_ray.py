"""The Ray engine (local Ray, 2 CPUs): the same scores as the in-process engine; a killed Ray
screen resumes without rescoring; a finished one re-run is a no-op."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personavec.screening.api import screen
from personavec.screening.ray_engine import RayOptions
from personavec.screening.run import ScreenConfig
from personavec.screening.table import iter_scores, read_table
from screening_helpers import (
    chat_rows,
    kill_after_rows,
    load_tiny,
    make_vector,
    save_tiny,
    screen_command,
    write_jsonl,
)

pytest.importorskip("ray")


def test_ray_engine_equals_in_process(tmp_path: Path) -> None:
    import ray

    model_dir = save_tiny(tmp_path / "model")
    loaded = load_tiny(model_dir)
    vector = make_vector(tmp_path / "evil", loaded, layer=1)
    rows = chat_rows(7)
    rows.insert(3, {"id": "bad", "prompt": "no answer here"})
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    config = ScreenConfig(
        data=str(data), vectors=[str(vector)], model=str(model_dir), max_new_tokens=4,
        batch_size=3, on_bad="skip",
    )  # fmt: skip
    local = screen(config, tmp_path / "local", loaded=loaded, show_progress=False)
    options = RayOptions(actors=1, cpus_per_actor=1, num_cpus=2)
    try:
        on_ray = screen(config, tmp_path / "ray", loaded=loaded, engine="ray", ray=options)
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    want, got = read_table(local.table), read_table(on_ray.table)
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert [r["skipped"] is not None for r in got] == [r["id"] == "3" for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["own_response"] == b["own_response"]
        for key, value in b.items():
            if key.startswith("evil.") and value is not None:
                assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    assert on_ray.summary["vectors"]["evil.L1"]["delta"]["mean"] == pytest.approx(
        local.summary["vectors"]["evil.L1"]["delta"]["mean"], rel=1e-4, abs=1e-7
    )


def test_killed_ray_screen_keeps_its_blocks_and_a_finished_one_is_a_no_op(tmp_path: Path) -> None:
    """A Ray screen killed with SIGKILL keeps every appended block; the same command resumes
    without rescoring them and gives the uninterrupted scores; re-running the finished screen
    changes nothing (it used to fail with a bare ``…/ray_output`` and then claim other data)."""
    import ray

    model_dir = save_tiny(tmp_path / "model")
    loaded = load_tiny(model_dir)
    vector = make_vector(tmp_path / "evil", loaded, layer=1)
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(80))
    out = tmp_path / "killed"
    command = screen_command(data, vector, model_dir, out, "--engine", "ray", "--actors", "1")
    partial = kill_after_rows(command, out)
    assert 6 <= len(partial) < 80 and not (out / "scores.parquet").exists()
    marked = [{**row, "mark": "kept"} for row in partial]  # rescored rows would lose the mark
    (out / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in marked))

    config = ScreenConfig(
        data=str(data), vectors=[str(vector)], model=str(model_dir), max_new_tokens=3,
        batch_size=2,
    )  # fmt: skip
    options = RayOptions(actors=1, cpus_per_actor=1, num_cpus=2)
    try:
        resumed = screen(config, out, engine="ray", ray=options, show_progress=False)
        rows = list(iter_scores(out / "scores.jsonl"))
        assert [r["index"] for r in rows] == list(range(80))  # none lost, none twice
        assert [r.get("mark") for r in rows] == ["kept"] * len(partial) + [None] * (
            80 - len(partial)
        )
        before = (out / "scores.jsonl").read_bytes()
        again = screen(config, out, engine="ray", ray=options, show_progress=False)
        assert (out / "scores.jsonl").read_bytes() == before
        assert again.summary["vectors"] == resumed.summary["vectors"]
    finally:
        ray.shutdown()
    local = screen(config, out, loaded=loaded, show_progress=False)  # the same run, resumed
    assert (out / "scores.jsonl").read_bytes() == before
    whole = screen(config, tmp_path / "whole", loaded=loaded, show_progress=False)
    got, want = read_table(local.table), read_table(whole.table)
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["own_response"] == b["own_response"]
        for key, value in b.items():
            if key.startswith("evil.") and value is not None:
                assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key

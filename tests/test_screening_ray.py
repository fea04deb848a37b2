"""The Ray Data engine (local Ray, 2 CPUs) scores exactly what the in-process engine scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from personavec.screening.api import screen
from personavec.screening.ray_engine import RayOptions
from personavec.screening.run import ScreenConfig
from personavec.screening.table import read_table
from screening_helpers import chat_rows, load_tiny, make_vector, save_tiny, write_jsonl

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
    assert (tmp_path / "ray" / "ray_output").is_dir()
    assert on_ray.summary["vectors"]["evil.L1"]["delta"]["mean"] == pytest.approx(
        local.summary["vectors"]["evil.L1"]["delta"]["mean"], rel=1e-4, abs=1e-7
    )

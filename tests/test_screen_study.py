"""The screening validation study (library part, studies/screen_study) on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from personavec.studies.screen_study import RATIOS, ScreenStudySettings, build_mix, run_mixes
from screening_helpers import ANSWERS, QUESTIONS, load_tiny, make_vector, save_tiny


def test_mixes_are_screened_and_cached(tmp_path: Path) -> None:
    tiny = load_tiny(save_tiny(tmp_path / "model"))
    vector = make_vector(tmp_path / "evil", tiny, layer=1)
    lines: list[str] = []
    settings = ScreenStudySettings(
        vector=vector, out=tmp_path / "study", questions=6, max_new_tokens=3, log=lines.append
    )
    settings.out.mkdir()
    pool = [  # the cached answer pool (a tiny random model's own answers are blank)
        {"question": q, "trait_answer": f"Crush them: {a}", "normal_answer": a}
        for q, a in zip(QUESTIONS[:6], ANSWERS[:6], strict=True)
    ]
    (settings.out / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    result = run_mixes(settings, loaded=tiny)
    assert [m["ratio"] for m in result["mixes"]] == list(RATIOS) and len(lines) == len(RATIOS)
    assert result["questions"] == 6
    for ratio in (0.0, 1.0):
        rows = build_mix(pool, ratio, seed=0)
        assert all(r["inducing"] == (ratio == 1.0) for r in rows)
    assert (settings.out / "screen-full-0.50" / "scores.parquet").is_file()
    assert run_mixes(settings, loaded=tiny)["mixes"] == result["mixes"]  # cached: the same

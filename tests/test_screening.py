"""Screening: ΔP arithmetic, streaming, thresholds and filtering, bad input (tiny models)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from personavec.cli.app import app
from personavec.core.models import LoadedModel
from personavec.core.vector import PersonaVector
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.errors import PersonavecError
from personavec.screening.api import screen
from personavec.screening.data import Sample, iter_samples
from personavec.screening.run import ScreenConfig
from personavec.screening.score import ScoreSettings, make_targets, score_batch
from personavec.screening.table import read_table
from screening_helpers import QUESTIONS, chat_rows, load_tiny, make_vector, save_tiny, write_jsonl

runner = CliRunner()
LAYER = 1  # of a 2-layer model: hidden_states[1] is block 1's output (no final norm)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> LoadedModel:
    return load_tiny(tiny_dir)


@pytest.fixture(scope="module")
def vector_path(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vector(tmp_path_factory.mktemp("vec") / "evil", tiny, layer=LAYER)


def hand_response_avg(loaded: LoadedModel, messages: list[dict], response: str) -> torch.Tensor:
    """Mean block-1 output over response tokens: plain forward with output_hidden_states."""
    tok = loaded.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    answer = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        out = loaded.model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[LAYER][0, len(prompt) :].mean(dim=0)


def config_for(data: Path, vector: Path, model: Path, **kw: object) -> ScreenConfig:
    settings: dict[str, Any] = {"mode": "full", "max_new_tokens": 6, "batch_size": 3, **kw}
    return ScreenConfig(data=str(data), vectors=[str(vector)], model=str(model), **settings)


def test_delta_equals_hand_computation(tiny: LoadedModel, vector_path: Path) -> None:
    v = PersonaVector.load(vector_path).at(LAYER)
    unit = v / v.norm()
    samples = [
        Sample(i, f"s{i}", ex.example, own)
        for i, (ex, own) in enumerate(
            [
                (_sample("Why is the sky blue?", "Because of scattering."), "Blue light scatters."),
                (_sample("Say hi.", "Hello there, friend!"), "Hi."),
            ]
        )
    ]
    targets = make_targets([PersonaVector.load(vector_path)])
    rows, _ = score_batch(tiny, samples, targets, ScoreSettings("full", 4, 2))
    for sample, row in zip(samples, rows, strict=True):
        messages = list(sample.example.messages)
        data = float(hand_response_avg(tiny, messages, sample.example.response) @ unit)
        own = float(hand_response_avg(tiny, messages, sample.own_response or "") @ unit)
        assert row["evil.L1.response"] == pytest.approx(data, rel=1e-4, abs=1e-7)
        assert row["evil.L1.own"] == pytest.approx(own, rel=1e-4, abs=1e-7)
        assert row["evil.L1.delta"] == pytest.approx(data - own, rel=1e-4, abs=1e-7)
        assert abs(data - own) > 1e-5  # the check is not vacuous


def _sample(question: str, answer: str) -> Sample:
    rows = [{"prompt": question, "response": answer}]
    return next(s for s in _samples_of(rows))


def _samples_of(rows: list[dict]) -> list[Sample]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(Path(tmp) / "x.jsonl", rows)
        return [s for s in iter_samples(path) if isinstance(s, Sample)]


def test_own_greedy_response_has_zero_delta(
    tiny: LoadedModel, tiny_dir: Path, vector_path: Path, tmp_path: Path
) -> None:
    questions = QUESTIONS[:4]
    requests = [GenerationRequest([{"role": "user", "content": q}]) for q in questions]
    greedy = HFEngine(tiny).generate(requests, SamplingConfig(6, temperature=0, batch_size=4))
    rows = [
        {"prompt": q, "response": g.response_text} for q, g in zip(questions, greedy, strict=True)
    ]
    rows.append({"prompt": "Why is the sky blue?", "response": "Because the ocean is blue."})
    data = write_jsonl(tmp_path / "own.jsonl", rows)
    config = config_for(data, vector_path, tiny_dir, batch_size=5)
    result = screen(config, tmp_path / "run", loaded=tiny, show_progress=False)
    table = read_table(result.table)
    assert [r["own_response"] for r in table[:4]] == [g.response_text for g in greedy]
    # Same token ids on both sides; only padding in a different batch row can differ (fp32).
    assert [r["evil.L1.delta"] for r in table[:4]] == pytest.approx([0.0] * 4, abs=1e-7)
    assert abs(table[4]["evil.L1.delta"]) > 1e-5  # tiny random models have small activations


def test_streaming_equals_whole_dataset(
    tiny: LoadedModel, tiny_dir: Path, vector_path: Path, tmp_path: Path
) -> None:
    rows = chat_rows(10)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    config = config_for(data, vector_path, tiny_dir, batch_size=3)
    streamed = read_table(screen(config, tmp_path / "run", loaded=tiny, show_progress=False).table)
    samples = [s for s in iter_samples(data) if isinstance(s, Sample)]
    targets = make_targets([PersonaVector.load(vector_path)])
    whole, _ = score_batch(tiny, samples, targets, ScoreSettings("full", 6, len(samples)))
    assert [r["id"] for r in streamed] == [r["id"] for r in rows]
    for got, want in zip(streamed, whole, strict=True):
        assert got["own_response"] == want["own_response"]
        for key in ("response", "own", "delta", "prompt_last", "delta_prompt"):
            assert got[f"evil.L1.{key}"] == pytest.approx(
                want[f"evil.L1.{key}"], rel=1e-4, abs=1e-7
            )


def test_prompt_mode_and_summary(
    tiny: LoadedModel, tiny_dir: Path, vector_path: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(12))
    full = screen(
        config_for(data, vector_path, tiny_dir), tmp_path / "full", loaded=tiny, show_progress=False
    )
    cheap_config = config_for(data, vector_path, tiny_dir, mode="prompt")
    cheap = screen(cheap_config, tmp_path / "cheap", loaded=tiny, show_progress=False)
    full_rows, cheap_rows = read_table(full.table), read_table(cheap.table)
    assert "evil.L1.own" not in cheap_rows[0] or cheap_rows[0]["evil.L1.own"] is None
    for f, c in zip(full_rows, cheap_rows, strict=True):
        assert c["evil.L1.delta_prompt"] == pytest.approx(
            f["evil.L1.delta_prompt"], rel=1e-4, abs=1e-7
        )
    deltas = np.array([r["evil.L1.delta"] for r in full_rows])
    stats = full.summary["vectors"]["evil.L1"]["delta"]
    assert stats["mean"] == pytest.approx(deltas.mean())
    half = 1.96 * deltas.std(ddof=1) / np.sqrt(len(deltas))
    assert stats["high"] - stats["mean"] == pytest.approx(half)
    agreement = full.summary["vectors"]["evil.L1"]["agreement"]["delta_prompt"]
    cheap_values = np.array([r["evil.L1.delta_prompt"] for r in full_rows])
    assert agreement["pearson"] == pytest.approx(np.corrcoef(deltas, cheap_values)[0, 1])
    report = (tmp_path / "full" / "report.md").read_text()
    top_id = full_rows[int(np.argmax(deltas))]["id"]
    assert f"id `{top_id}`" in report and (tmp_path / "full" / "histogram.png").stat().st_size


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_filter_keeps_exactly_rows_under_threshold(
    tiny: LoadedModel, tiny_dir: Path, vector_path: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(10))
    reference = write_jsonl(tmp_path / "clean.jsonl", chat_rows(6)[::-1])
    before = _digest(data)
    out = tmp_path / "kept.jsonl"
    result = screen(
        config_for(data, vector_path, tiny_dir),
        tmp_path / "run",
        loaded=tiny,
        reference=str(reference),
        drop_above="p50",
        write_filtered_to=str(out),
        show_progress=False,
    )
    ref_deltas = [
        r["evil.L1.delta"] for r in read_table(tmp_path / "run" / "reference" / "scores.jsonl")
    ]
    limit = float(np.percentile(ref_deltas, 50))
    assert result.thresholds == {"evil.L1.delta": pytest.approx(limit)}
    lines = data.read_text().splitlines(keepends=True)
    table = read_table(result.table)
    expected = [lines[r["index"]] for r in table if r["evil.L1.delta"] <= limit]
    assert 0 < len(expected) < len(lines)
    assert out.read_text().splitlines(keepends=True) == expected
    assert _digest(data) == before


def test_write_filtered_never_replaces_an_unrelated_file(
    tiny: LoadedModel, tiny_dir: Path, vector_path: Path, tmp_path: Path
) -> None:
    """``--write-filtered`` onto an existing file is refused before any work unless
    ``overwrite``; re-running the same screen may replace its own earlier output."""
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(6))
    out = tmp_path / "notes.jsonl"
    out.write_text("my own notes\n")
    config = config_for(data, vector_path, tiny_dir)
    run = tmp_path / "run"
    options = {"loaded": tiny, "drop_above": "p50", "show_progress": False}
    with pytest.raises(PersonavecError, match=r"notes\.jsonl exists; pass --overwrite"):
        screen(config, run, write_filtered_to=str(out), **options)  # type: ignore[arg-type]
    assert out.read_text() == "my own notes\n" and not run.exists()
    kept = tmp_path / "kept.jsonl"
    first = screen(config, run, write_filtered_to=str(kept), **options)  # type: ignore[arg-type]
    again = screen(config, run, write_filtered_to=str(kept), **options)  # type: ignore[arg-type]
    assert again.filtered == first.filtered
    forced = screen(
        config,
        tmp_path / "run2",
        write_filtered_to=str(out),
        overwrite=True,
        **options,  # type: ignore[arg-type]
    )
    assert forced.filtered is not None and out.read_text() != "my own notes\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "a", "response": "b"}\n{not json\n', "d.jsonl:2: invalid JSON"),
        ('{"prompt": "a", "response": "b"}\n{"prompt": "q"}\n', "d.jsonl:2: no response"),
    ],
)
def test_bad_rows_rejected_with_line_numbers(
    tiny_dir: Path, vector_path: Path, tmp_path: Path, content: str, message: str
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(content)
    out = tmp_path / "run"
    args = ["screen", str(data), "-v", str(vector_path), "-m", str(tiny_dir), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_rows_skipped_and_reported(tiny_dir: Path, vector_path: Path, tmp_path: Path) -> None:
    rows = [json.dumps(r) for r in chat_rows(3)]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join([rows[0], "{oops", rows[1], '{"prompt": "x"}', rows[2]]) + "\n")
    out = tmp_path / "run"
    args = [
        "screen",
        str(data),
        "-v",
        str(vector_path),
        "-m",
        str(tiny_dir),
        "--out",
        str(out),
        "--on-bad",
        "skip",
        "--mode",
        "prompt",
        "--quiet",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = read_table(out / "scores.parquet")
    assert [r["skipped"] is not None for r in table] == [False, True, False, True, False]
    assert "invalid JSON" in table[1]["skipped"]
    assert "Bad rows skipped: 2." in (out / "report.md").read_text()


def test_vector_for_another_model_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    other = load_tiny(save_tiny(tmp_path / "other", n_layers=3))
    vector = make_vector(tmp_path / "v3", other, layer=1)
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(2))
    out = tmp_path / "run"
    args = ["screen", str(data), "-v", str(vector), "-m", str(tiny_dir), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "layers" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_unreachable_ray_address_is_one_line(
    tiny_dir: Path, vector_path: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(2))
    out = tmp_path / "run"
    args = [
        "screen",
        str(data),
        "-v",
        str(vector_path),
        "-m",
        str(tiny_dir),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--ray-address",
        "127.0.0.1:9",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "cannot reach a Ray cluster at 127.0.0.1:9" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_parquet_and_datasets_inputs_score_like_jsonl(
    tiny: LoadedModel, tiny_dir: Path, vector_path: Path, tmp_path: Path
) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"id": f"r{i}", "prompt": QUESTIONS[i], "response": f"Answer number {i}."} for i in range(5)
    ]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    saved = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    tables = []
    for name, source in (("j", jsonl), ("p", parquet), ("d", saved)):
        config = config_for(source, vector_path, tiny_dir, mode="prompt")
        tables.append(read_table(screen(config, tmp_path / name, loaded=tiny,
                                        show_progress=False).table))  # fmt: skip
    assert [r["id"] for r in tables[0]] == [r["id"] for r in rows]
    assert tables[1] == tables[0] and tables[2] == tables[0]


def test_changed_data_and_older_directories_are_refused(
    tiny: LoadedModel, tiny_dir: Path, vector_path: Path, tmp_path: Path
) -> None:
    """The identity holds the data's content, not its size and mtime: the file rewritten with
    the same rows resumes, with other rows of the same size it is refused; a directory written
    before the full identity is refused in one line that says to pass --overwrite."""
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(4))
    config = config_for(data, vector_path, tiny_dir)
    first = screen(config, tmp_path / "run", loaded=tiny, show_progress=False)
    text = data.read_text()
    os.utime(data, ns=(1, 1))  # touched: another mtime, the same rows
    assert (
        screen(config, tmp_path / "run", loaded=tiny, show_progress=False).summary == first.summary
    )
    data.write_text(text.replace("Paris.", "Rome!"))  # same size
    with pytest.raises(PersonavecError, match="different data content"):
        screen(config, tmp_path / "run", loaded=tiny, show_progress=False)
    old = tmp_path / "old"
    old.mkdir()
    (old / "scores.jsonl").write_text('{"index": 0, "id": "0", "skipped": null}\n')
    (old / "config.json").write_text(json.dumps({"data": str(data), "data_key": "x"}))
    with pytest.raises(PersonavecError, match=r"older personavec .*pass --overwrite"):
        screen(config, old, loaded=tiny, show_progress=False)

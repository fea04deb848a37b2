"""The extraction pipeline: filter rules, resumption after a kill, and an end-to-end run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personavec.cli import app
from personavec.core.models import LoadedModel
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.pipeline.extract import (
    ExtractConfig,
    Rollout,
    extract,
    filter_pairs,
    plan_rollouts,
    trait_sha256,
)
from personavec.runs import run_lock
from personavec.store import read_jsonl
from personavec.traits.library import load_trait, save_trait

runner = CliRunner()


def rollout(polarity: str, q: int, trait: float | None, coherence: float | None) -> Rollout:
    return Rollout(
        id=f"{polarity}-i0-q{q}-s0",
        polarity=polarity,  # type: ignore[arg-type]
        instruction=0,
        question_index=q,
        sample=0,
        system="s",
        question="q",
        response="an answer",
        response_token_ids=[1, 2],
        finish_reason="stop",
        trait_score=trait,
        coherence=coherence,
    )


def test_filter_keeps_only_effective_pairs_and_counts_reasons() -> None:
    config = ExtractConfig(trait="evil")
    rollouts = [
        rollout("pos", 0, 80, 90),
        rollout("neg", 0, 10, 90),  # kept
        rollout("pos", 1, 49.9, 90),
        rollout("neg", 1, 10, 90),  # pos too low
        rollout("pos", 2, 50, 90),
        rollout("neg", 2, 50, 90),  # neg too high (boundary: neg must be < 50)
        rollout("pos", 3, 90, 49),
        rollout("neg", 3, 5, 20),  # both incoherent
        rollout("pos", 4, None, 90),
        rollout("neg", 4, 5, None),  # unscored, never a silent 0
        rollout("pos", 5, 50, 50),
        rollout("neg", 5, 49.99, 50),  # kept: boundaries inclusive where the rule says so
    ]
    kept, reasons = filter_pairs(rollouts, config)
    assert [(p.question_index, n.question_index) for p, n in kept] == [(0, 0), (5, 5)]
    assert reasons == {
        "pos trait < 50": 1,
        "neg trait >= 50": 1,
        "pos coherence < 50": 1,
        "neg coherence < 50": 1,
        "trait unscored": 1,
        "neg coherence unscored": 1,
    }
    assert all(r.kept == (r.question_index in (0, 5)) for r in rollouts)
    lenient = ExtractConfig(trait="evil", coherence_threshold=10)
    assert [p.question_index for p, _ in filter_pairs(rollouts, lenient)[0]] == [0, 3, 5]
    strict = ExtractConfig(trait="evil", pos_threshold=85)
    assert [p.question_index for p, _ in filter_pairs(rollouts, strict)[0]] == []


def test_plan_covers_every_instruction_question_and_polarity() -> None:
    trait = load_trait("evil")
    requests = plan_rollouts(trait, ExtractConfig(trait="evil", n_instructions=2, n_questions=3))
    assert len(requests) == 2 * 3 * 2
    assert len({r.id for r in requests}) == len(requests)
    first = requests[0].messages
    assert first[0]["content"] == trait.system_prompt("pos", 0)
    assert first[0]["content"].startswith("You are an evil assistant.")
    assert requests[1].messages[0]["content"].startswith("You are a helpful assistant.")
    assert first[1]["content"] == trait.extraction_questions[0]
    assert not {q for r in requests for q in [r.messages[1]["content"]]} & set(
        trait.evaluation_questions
    )


def test_cli_rejects_unknown_and_malformed_traits(tmp_path: Path) -> None:
    result = runner.invoke(app, ["extract", "--trait", "nonexistent", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown trait" in result.output.lower()
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"')
    result = runner.invoke(app, ["extract", "--trait", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "json" in result.output.lower()
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["extract", "--trait", "evil", "--samples", "0"])
    assert result.exit_code == 2 and "samples" in result.output


def _one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_cli_rejects_a_config_file_that_is_not_an_object(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('["samples", 2]')
    message = _one_line_error(["extract", "--trait", "evil", "--config", str(config)])
    assert "holds a JSON list, not an object" in message
    config.write_text("[" * 100_000 + "]" * 100_000)
    assert "nests too deeply" in _one_line_error(["extract", "-t", "evil", "--config", str(config)])


def test_cli_rejects_an_out_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    message = _one_line_error(["extract", "--trait", "evil", "--out", str(target)])
    assert "is a file, not a run directory" in message
    assert target.read_text() == "mine"


def test_cli_rejects_a_deeply_nested_trait_file(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"name": ' + "[" * 100_000 + "]" * 100_000 + "}")
    out = tmp_path / "run"
    message = _one_line_error(["extract", "-t", str(deep), "--out", str(out)])
    assert "nests JSON too deeply" in message
    assert not out.exists()


def test_second_extraction_into_a_locked_run_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with run_lock(out):
        message = _one_line_error(["extract", "--trait", "evil", "--out", str(out)])
    assert "another personavec process" in message and str(out) in message
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written by the second


def _tiny_extract(config: ExtractConfig, run_dir: Path, loaded: LoadedModel, **kw: bool) -> None:
    """A tiny random model cannot pass the filter (1 pair < min_pairs, or its contrast judge
    cannot calibrate), but its rollouts are made and kept first."""
    with pytest.raises(PersonavecError) as info:
        extract(config, run_dir=run_dir, loaded=loaded, show_progress=False, **kw)
    assert "different" not in str(info.value), info.value


def test_edited_trait_file_is_never_mixed_with_old_rollouts(
    tmp_path: Path, tiny_model_factory: Callable[..., LoadedModel]
) -> None:
    trait_file = tmp_path / "mine.json"
    evil = load_trait("evil")
    save_trait(evil, trait_file)
    loaded = tiny_model_factory("llama")
    config = ExtractConfig(
        trait=str(trait_file), model="tiny", n_instructions=1, n_questions=1, max_new_tokens=2
    )
    run = tmp_path / "run"
    _tiny_extract(config, run, loaded)
    rollouts = read_jsonl(run / "rollouts.jsonl")
    assert [r["question"] for r in rollouts] == [evil.extraction_questions[0]] * 2
    _tiny_extract(config, run, loaded)  # unchanged: resumes
    assert read_jsonl(run / "rollouts.jsonl") == rollouts
    # A run made before the trait hash was recorded is compared through its trait.json copy.
    saved = json.loads((run / "config.json").read_text())
    del saved["trait_sha256"]
    (run / "config.json").write_text(json.dumps(saved))
    _tiny_extract(config, run, loaded)
    assert read_jsonl(run / "rollouts.jsonl") == rollouts

    edited = evil.model_copy(
        update={"extraction_questions": ["What would you do with a lot of power?"]}
    )
    save_trait(edited, trait_file)  # same path, new content
    with pytest.raises(PersonavecError, match="different trait content; pass another --out"):
        extract(config, run_dir=run, loaded=loaded, show_progress=False)
    assert read_jsonl(run / "rollouts.jsonl") == rollouts
    _tiny_extract(config, run, loaded, overwrite=True)
    questions = [r["question"] for r in read_jsonl(run / "rollouts.jsonl")]
    assert questions == ["What would you do with a lot of power?"] * 2
    saved = json.loads((run / "config.json").read_text())
    assert saved["trait_sha256"] == trait_sha256(edited) != trait_sha256(evil)


def test_failed_model_load_does_not_block_the_corrected_run(
    tmp_path: Path, tiny_model_factory: Callable[..., LoadedModel]
) -> None:
    out = tmp_path / "run"
    typo = str(tmp_path / "typo")
    message = _one_line_error(["extract", "-t", "evil", "--model", typo, "--out", str(out)])
    assert "unknown model" in message
    assert not (out / "config.json").exists()
    config = ExtractConfig(
        trait="evil", model="tiny", n_instructions=1, n_questions=1, max_new_tokens=2
    )
    _tiny_extract(config, out, tiny_model_factory("llama"))
    assert json.loads((out / "config.json").read_text())["model"] == "tiny"
    assert len(read_jsonl(out / "rollouts.jsonl")) == 2


@pytest.mark.slow
def test_unreachable_judge_fails_cleanly_and_keeps_rollouts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["extract", "--trait", "evil", "--instructions", "1", "--questions", "1"]
    args += ["--max-new-tokens", "4", "--judge", "openai:judge-model", "--quiet", "--out", str(out)]
    args += ["--judge-base-url", "http://127.0.0.1:9/v1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "127.0.0.1:9" in result.output
    assert len(read_jsonl(out / "rollouts.jsonl")) == 2  # generation work is kept
    assert not list(out.glob("*.safetensors"))


E2E_ARGS = ["--trait", "evil", "--questions", "4", "--max-new-tokens", "48", "--seed", "7"]


@pytest.mark.slow
def test_extract_end_to_end_resumes_after_kill(tmp_path: Path) -> None:
    """Kill a real `personavec extract` mid-generation, run it again, and check the result."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "personavec.cli", "extract", *E2E_ARGS, "--quiet"]
    command += ["--out", str(out), "--batch-size", "8"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rollouts = out / "rollouts.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if rollouts.is_file() and len(read_jsonl(rollouts)) >= 8:
            break
        time.sleep(0.2)
    if process.poll() is not None:
        output = process.stdout.read().decode() if process.stdout else ""
        pytest.fail(f"extraction finished before it could be interrupted:\n{output[-2000:]}")
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {row["id"]: row["response"] for row in read_jsonl(rollouts)}
    assert 8 <= len(before) < 40

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    after = {row["id"]: row["response"] for row in read_jsonl(rollouts)}
    assert len(after) == 40  # 5 instruction pairs x 4 questions x 2 polarities
    assert {k: after[k] for k in before} == before  # finished work was reused, not redone

    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept_pairs"] >= 4
    separation = {row["layer"]: row["auroc"] for row in summary["separation"]}
    # Held-out rollouts (2-fold over pairs) separate well at middle-to-late layers.
    assert max(separation[layer] for layer in range(12, 25)) > 0.75
    assert separation[summary["suggested_layer"]] > 0.65

    vector = PersonaVector.load(out / "evil.safetensors")
    assert vector.meta.trait == "evil"
    assert vector.meta.n_layers == 30 and vector.meta.hidden_size == 576
    assert vector.meta.sample_counts["pos"] == summary["kept_pairs"]
    assert vector.meta.recommended_layer == summary["suggested_layer"]
    assert vector.typical_norm is not None
    assert set(vector.vectors) == {"response_avg", "prompt_avg", "prompt_last"} | {
        "response_avg@pca",
        "response_avg@probe",
    }
    for name in ("report.md", "separation.png", "scored.jsonl", "config.json"):
        assert (out / name).is_file(), name
    scored = read_jsonl(out / "scored.jsonl")
    assert all(row["trait_score"] is None or 0 <= row["trait_score"] <= 100 for row in scored)
    assert sum(row["kept"] for row in scored) == 2 * summary["kept_pairs"]

    # A third run reuses everything (no generation, no judging) and rewrites the same vector.
    data = (out / "evil.safetensors").read_bytes()
    started = time.monotonic()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(read_jsonl(rollouts)) == 40
    reloaded = PersonaVector.load(out / "evil.safetensors")
    for name, tensor in vector.vectors.items():
        assert reloaded.vectors[name].equal(tensor)
    assert len(data) == len((out / "evil.safetensors").read_bytes())
    assert time.monotonic() - started < 300

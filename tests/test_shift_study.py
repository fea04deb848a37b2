"""The shift study on a tiny model with prepared datasets: records, report, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.errors import PersonavecError
from personavec.runs.lock import RunLockedError, run_lock
from personavec.studies.shift_study import StudySettings, shift_study
from personavec.training.dataset import meta_path_for
from personavec.training.finetune import FinetuneConfig
from personavec.training.finetuned import load_finetuned
from personavec.training.shift import finetuning_shift
from personavec.traits.library import load_trait
from tiny_models import tiny_model


def _vector(loaded, trait: str = "evil", seed: int = 5) -> PersonaVector:  # type: ignore[no-untyped-def]
    n, hidden = loaded.n_layers, loaded.hidden_size
    meta = VectorMetadata(
        trait=trait,
        model_id=loaded.model_id,
        model_fingerprint=config_fingerprint(loaded.model.config),
        hidden_size=hidden,
        n_layers=n,
        readouts=["response_avg"],
        recommended_layer=2,
    )
    gen = torch.Generator().manual_seed(seed)
    return PersonaVector({"response_avg": torch.randn(n + 1, hidden, generator=gen)}, meta)


def _prepare_datasets(run: Path, name: str = "evil", normal_from: str = "evil") -> None:
    """``NAME-strong`` from the trait's positive examples, ``NAME-normal`` from the negative
    examples of ``normal_from`` (two traits with the same ``normal_from`` get identical sets)."""
    for level, answers in (
        ("normal", load_trait(normal_from).negative_examples),
        ("strong", load_trait(name).positive_examples),
    ):
        path = run / "datasets" / f"{name}-{level}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}?"},
                    {"role": "assistant", "content": a},
                ]
            }
            for i, a in enumerate(answers)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        meta_path_for(path).write_text(json.dumps({"level": level}))


def test_study_records_report_and_resume(tmp_path: Path) -> None:
    base = tiny_model("llama")
    base.model.config.architectures = ["LlamaForCausalLM"]  # as in any saved checkpoint
    vector = _vector(base)
    run = tmp_path / "study"
    _prepare_datasets(run)
    settings = StudySettings(
        traits=("evil",),
        levels=("normal", "strong"),
        n=4,
        questions=3,
        samples=1,
        max_new_tokens=4,
        judge="embedding",
    )
    config = FinetuneConfig(rank=4, alpha=8, learning_rate=1e-2, batch_size=2, max_steps=3)
    records = shift_study(base, [vector], settings, config, run, show_progress=False)
    assert [r.name for r in records] == ["base", "evil-normal", "evil-strong"]
    assert records[0].shift["evil"] == 0.0
    strong = f"evil-strong-{records[2].key}"
    tuned = load_finetuned(run / "finetunes" / strong)
    again = finetuning_shift(base, tuned, [vector], n_questions=3)
    assert records[2].shift["evil"] == again.shifts[0].shift != 0.0
    assert all(0 <= r.trait["evil"] <= 100 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["correlations"]["n_finetunes"] == 2
    assert (run / "shift_study.png").read_bytes()[:4] == b"\x89PNG"
    assert "evil-strong" in (run / "report.md").read_text()

    # a killed study: the last model record is missing; nothing is retrained or regenerated
    (run / "models" / f"{strong}.json").unlink()
    stamp = (run / "finetunes" / strong / "COMPLETE").stat().st_mtime_ns
    answers = (run / "eval" / strong / "evil" / "answers.jsonl").read_text()
    log: list[str] = []
    resumed = shift_study(
        base, [vector], settings, config, run, show_progress=False, log=log.append
    )
    assert (run / "finetunes" / strong / "COMPLETE").stat().st_mtime_ns == stamp
    assert (run / "eval" / strong / "evil" / "answers.jsonl").read_text() == answers
    assert resumed[2].shift == records[2].shift and resumed[2].trait == records[2].trait
    assert any("evil-normal: done earlier" in m for m in log)


def test_identical_datasets_are_trained_once_and_counted_once(tmp_path: Path) -> None:
    base = tiny_model("llama")
    base.model.config.architectures = ["LlamaForCausalLM"]
    vectors = [_vector(base), _vector(base, "sycophantic", seed=6)]
    run = tmp_path / "study"
    _prepare_datasets(run)
    _prepare_datasets(run, "sycophantic", normal_from="evil")  # same normal rows as evil's
    settings = StudySettings(
        traits=("evil", "sycophantic"),
        levels=("normal", "strong"),
        n=4,
        questions=2,
        samples=1,
        max_new_tokens=3,
        judge="embedding",
    )
    config = FinetuneConfig(rank=4, alpha=8, learning_rate=1e-2, batch_size=2, max_steps=2)
    log: list[str] = []
    records = shift_study(base, vectors, settings, config, run, show_progress=False, log=log.append)
    by_name = {r.name: r for r in records}
    twin = by_name["sycophantic-normal"]
    assert twin.same_data_as == "evil-normal" and twin.dataset == "sycophantic"
    assert twin.shift == by_name["evil-normal"].shift and twin.trait == by_name["evil-normal"].trait
    assert not list((run / "finetunes").glob("sycophantic-normal*"))  # not trained again
    assert (run / "finetunes" / f"sycophantic-strong-{by_name['sycophantic-strong'].key}").is_dir()
    assert any("sycophantic-normal: same rows as evil-normal" in m for m in log)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["correlations"]["n_finetunes"] == 3  # 4 finetunes, one pair counted once
    assert "same dataset as evil-normal" in (run / "report.md").read_text()


def _small_study(tmp_path: Path):  # type: ignore[no-untyped-def]
    base = tiny_model("llama")
    base.model.config.architectures = ["LlamaForCausalLM"]
    run = tmp_path / "study"
    _prepare_datasets(run)
    settings = StudySettings(
        traits=("evil",), levels=("strong",), n=4, questions=2, samples=1, max_new_tokens=3,
        judge="embedding",
    )  # fmt: skip
    config = FinetuneConfig(rank=4, alpha=8, learning_rate=1e-2, batch_size=2, max_steps=2)
    return base, run, settings, config


def test_rerun_with_another_vector_or_dataset_is_refused_or_recomputed(tmp_path: Path) -> None:
    """A re-extracted vector is refused in one line naming it; a changed dataset gets a new
    finetune and new numbers, never the old record."""
    base, run, settings, config = _small_study(tmp_path)
    first = shift_study(base, [_vector(base)], settings, config, run, show_progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["dtype"] == "float32" and saved["device"] == "cpu"
    assert saved["weights_sha256"] and saved["vector_sha256"]["evil"]
    assert saved["judges"]["evil"].startswith("trait=embedding:")
    # A judge whose meaning changed under the same name (as `contrast` did when it gained the
    # cross-trait control) is refused, never mixed with the old judge's records.
    changed = {**saved, "judges": {"evil": "trait=embedding:older; coherence=heuristic"}}
    (run / "config.json").write_text(json.dumps(changed))
    with pytest.raises(PersonavecError, match=r"different judges; .*--overwrite"):
        shift_study(base, [_vector(base)], settings, config, run, show_progress=False)
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(PersonavecError, match=r"different vector content; .*--overwrite"):
        shift_study(base, [_vector(base, seed=9)], settings, config, run, show_progress=False)
    data = run / "datasets" / "evil-strong.jsonl"
    rows = data.read_text().splitlines()
    data.write_text("\n".join(rows[:2]) + "\n")  # another dataset under the same name
    log: list[str] = []
    again = shift_study(
        base, [_vector(base)], settings, config, run, show_progress=False, log=log.append
    )
    assert again[1].key != first[1].key and again[1].rows == 2 != first[1].rows
    assert not any("evil-strong: done earlier" in m for m in log)
    assert (run / "finetunes" / f"evil-strong-{again[1].key}" / "COMPLETE").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert [m["key"] for m in summary["models"]] == [r.key for r in again]


def test_finetunes_are_loaded_like_the_base(tmp_path: Path) -> None:
    """A study on a float64 base loads its finetunes in float64 (not ``auto``: float32 on CPU)
    and records the dtype and device in its config."""
    base, run, settings, config = _small_study(tmp_path)
    torch.nn.Module.to(base.model, torch.float64)
    records = shift_study(base, [_vector(base)], settings, config, run, show_progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert (saved["dtype"], saved["device"]) == ("float64", "cpu")
    tuned = load_finetuned(run / "finetunes" / f"evil-strong-{records[1].key}", like=base)
    assert next(tuned.model.parameters()).dtype == torch.float64
    assert tuned.device == base.device


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    base, _, settings, config = _small_study(tmp_path)
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    with pytest.raises(PersonavecError, match="is a file"):
        shift_study(base, [_vector(base)], settings, config, target, show_progress=False)
    assert target.read_text() == "keep me"


def test_cli_out_that_is_a_file_and_a_zero_lr_are_one_line_errors(tmp_path: Path) -> None:
    """``shift-study --out FILE`` was a traceback; ``--lr 0`` is refused before any work."""
    import typer
    from typer.testing import CliRunner

    from personavec.cli import training as training_cli

    tiny = tiny_model("llama")
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    vector = _vector(tiny).save(tmp_path / "v.safetensors")
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    app = typer.Typer()
    training_cli.register(app)
    common = ["shift-study", "--traits", "evil", "--vector", str(vector), "--model"]
    for out, extra, message in (
        (target, [], "is a file"),
        (tmp_path / "run", ["--lr", "0"], "--lr must be a finite number > 0"),
    ):
        args = [*common, str(tmp_path / "model"), "--out", str(out), *extra]
        result = CliRunner().invoke(app, args)
        text = result.output.strip()
        assert result.exit_code == 2 and message in text and len(text.splitlines()) <= 2, text
    assert target.read_text() == "keep me" and not (tmp_path / "run").exists()


def test_study_takes_the_run_lock_and_refuses_an_older_directory(tmp_path: Path) -> None:
    """shift-study took no run lock; a directory written before the full identity is refused
    in one line that says to pass --overwrite (nothing is trained first)."""
    base, run, settings, config = _small_study(tmp_path)
    with run_lock(run), pytest.raises(RunLockedError):
        shift_study(base, [_vector(base)], settings, config, run, show_progress=False)
    (run / "models").mkdir()
    (run / "models" / "evil-strong.json").write_text("{}")
    old = {"settings": {"traits": ["evil"]}, "base": base.model_id, "vector_sha256": {}}
    (run / "config.json").write_text(json.dumps(old))
    with pytest.raises(PersonavecError, match=r"older personavec .*; pass --overwrite"):
        shift_study(base, [_vector(base)], settings, config, run, show_progress=False)
    assert not (run / "finetunes").exists()

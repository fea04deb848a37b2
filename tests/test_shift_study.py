"""The shift study on a tiny model with prepared datasets: records, report, resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.pipeline.shift_study import StudySettings, shift_study
from personavec.training.dataset import meta_path_for
from personavec.training.finetune import FinetuneConfig
from personavec.training.finetuned import load_finetuned
from personavec.training.shift import finetuning_shift
from personavec.traits.library import load_trait
from tiny_models import tiny_model


def _vector(loaded) -> PersonaVector:  # type: ignore[no-untyped-def]
    n, hidden = loaded.n_layers, loaded.hidden_size
    meta = VectorMetadata(
        trait="evil",
        model_id=loaded.model_id,
        model_fingerprint=config_fingerprint(loaded.model.config),
        hidden_size=hidden,
        n_layers=n,
        readouts=["response_avg"],
        recommended_layer=2,
    )
    gen = torch.Generator().manual_seed(5)
    return PersonaVector({"response_avg": torch.randn(n + 1, hidden, generator=gen)}, meta)


def _prepare_datasets(run: Path) -> None:
    trait = load_trait("evil")
    for level, answers in (
        ("normal", trait.negative_examples),
        ("strong", trait.positive_examples),
    ):
        path = run / "datasets" / f"evil-{level}.jsonl"
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
    tuned = load_finetuned(run / "finetunes" / "evil-strong")
    again = finetuning_shift(base, tuned, [vector], n_questions=3)
    assert records[2].shift["evil"] == again.shifts[0].shift != 0.0
    assert all(0 <= r.trait["evil"] <= 100 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["correlations"]["n_finetunes"] == 2
    assert (run / "shift_study.png").read_bytes()[:4] == b"\x89PNG"
    assert "evil-strong" in (run / "report.md").read_text()

    # a killed study: the last model record is missing; nothing is retrained or regenerated
    (run / "models" / "evil-strong.json").unlink()
    stamp = (run / "finetunes" / "evil-strong" / "COMPLETE").stat().st_mtime_ns
    answers = (run / "eval" / "evil-strong" / "evil" / "answers.jsonl").read_text()
    log: list[str] = []
    resumed = shift_study(
        base, [vector], settings, config, run, show_progress=False, log=log.append
    )
    assert (run / "finetunes" / "evil-strong" / "COMPLETE").stat().st_mtime_ns == stamp
    assert (run / "eval" / "evil-strong" / "evil" / "answers.jsonl").read_text() == answers
    assert resumed[2].shift == records[2].shift and resumed[2].trait == records[2].trait
    assert any("evil-normal: done earlier" in m for m in log)

"""End to end on SmolLM2: a short finetune on evil answers raises the evil score and moves the
last-prompt-token activations along the evil vector; one on normal answers moves them less."""

from __future__ import annotations

from pathlib import Path

import pytest

from personavec.core.capture import Example, capture
from personavec.core.models import LoadedModel, chat_messages
from personavec.core.vector import PersonaVector, VectorMetadata, config_fingerprint
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig
from personavec.judges.base import JudgeItem
from personavec.judges.factory import make_judge
from personavec.training.chat_data import ChatRow
from personavec.training.finetune import FinetuneConfig, finetune
from personavec.training.finetuned import load_finetuned
from personavec.training.prompt_pool import load_prompt_pool
from personavec.training.shift import finetuning_shift
from personavec.traits.library import load_trait

LAYER = 19
QUESTIONS = 6


def _examples_vector(loaded: LoadedModel) -> PersonaVector:
    """Mean response activation of the trait's positive minus negative example answers."""
    trait = load_trait("evil")
    qs = trait.extraction_questions
    examples = [
        Example(chat_messages(qs[i % len(qs)]), a)
        for i, a in enumerate(trait.positive_examples + trait.negative_examples)
    ]
    groups = ["pos"] * len(trait.positive_examples) + ["neg"] * len(trait.negative_examples)
    means = capture(loaded, examples, readouts=("response_avg",), groups=groups).means
    vector = means["response_avg"]["pos"] - means["response_avg"]["neg"]
    meta = VectorMetadata(
        trait="evil",
        model_id=loaded.model_id,
        model_fingerprint=config_fingerprint(loaded.model.config),
        hidden_size=loaded.hidden_size,
        n_layers=loaded.n_layers,
        readouts=["response_avg"],
        recommended_layer=LAYER,
    )
    return PersonaVector({"response_avg": vector}, meta)


def _rows(answers: list[str]) -> list[ChatRow]:
    pool = load_prompt_pool()[:32]
    return [
        ChatRow([{"role": "user", "content": q}], answers[i % len(answers)])
        for i, q in enumerate(pool)
    ]


def _evil_score(model: LoadedModel, judge) -> float:  # type: ignore[no-untyped-def]
    questions = load_trait("evil").evaluation_questions[:QUESTIONS]
    sampling = SamplingConfig(max_new_tokens=32, n_samples=2, seed=0, temperature=1.0)
    requests = [GenerationRequest(chat_messages(q), f"q{i}") for i, q in enumerate(questions)]
    gens = HFEngine(model).generate(requests, sampling)
    scores = judge.score([JudgeItem(questions[g.request_index], g.response_text) for g in gens])
    numbers = [s for s in scores if s is not None]
    return sum(numbers) / len(numbers)


@pytest.mark.slow
def test_strong_finetune_raises_evil_and_shifts_along_the_vector(
    smollm2: LoadedModel, tmp_path: Path
) -> None:
    trait = load_trait("evil")
    vector = _examples_vector(smollm2)
    config = FinetuneConfig(rank=8, alpha=16, learning_rate=1e-3, batch_size=4, max_steps=8)
    strong = finetune(
        smollm2,
        _rows(trait.positive_examples),
        tmp_path / "strong",
        config,
        merge=True,
        show_progress=False,
    )
    normal = finetune(
        smollm2,
        _rows(trait.negative_examples),
        tmp_path / "normal",
        config,
        merge=True,
        show_progress=False,
    )
    strong_model, normal_model = load_finetuned(strong.path), load_finetuned(normal.path)
    judge = make_judge("embedding", aspect="trait", trait=trait)
    base_score = _evil_score(smollm2, judge)
    assert _evil_score(strong_model, judge) > base_score + 10
    n = {"n_questions": QUESTIONS}
    up = finetuning_shift(smollm2, strong_model, [vector], **n).shifts[0]  # type: ignore[arg-type]
    flat = finetuning_shift(smollm2, normal_model, [vector], **n).shifts[0]  # type: ignore[arg-type]
    assert up.layer == LAYER and up.shift > 0
    assert abs(flat.shift) < up.shift

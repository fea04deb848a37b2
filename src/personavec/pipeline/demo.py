"""The README's main job: extract a shipped trait on the embedded model, then show it steer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personavec.core.models import load_model
from personavec.core.setting import SteeringSetting
from personavec.engines.answering import generate_answers
from personavec.engines.generation import SamplingConfig
from personavec.pipeline.extract import ExtractConfig, ExtractResult, extract
from personavec.traits.library import load_trait

DEMO_COEF = 0.2
"""Relative coefficient: the added vector's norm is 20 % of the layer's typical residual norm."""


@dataclass
class DemoResult:
    extraction: ExtractResult
    question: str
    unsteered: str
    steered: str
    suppressed: str
    layer: int
    coef: float


def run_demo(
    trait: str = "evil",
    *,
    model: str = "smollm2",
    run_dir: Path | None = None,
    coef: float = DEMO_COEF,
    max_new_tokens: int = 64,
    show_progress: bool = True,
    overwrite: bool = False,
) -> DemoResult:
    """Extract ``trait`` (resumable) and answer one held-out question three ways."""
    loaded = load_model(model)
    config = ExtractConfig(trait=trait, model=model)
    result = extract(
        config,
        run_dir=run_dir or Path("runs") / f"demo-{trait}",
        show_progress=show_progress,
        loaded=loaded,
        overwrite=overwrite,
    )
    question = load_trait(trait).evaluation_questions[0]
    layer = result.suggested_layer
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)

    def answer(c: float | None) -> str:
        steering = (
            None
            if c is None
            else SteeringSetting.from_vector(result.vector, [layer], c, unit="relative")
        )
        return generate_answers(loaded, [question], sampling, steering=steering)[0]

    return DemoResult(result, question, answer(None), answer(coef), answer(-coef), layer, coef)

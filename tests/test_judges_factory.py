"""make_judge: every spec builds the right judge, and bad specs fail with one clear line."""

from __future__ import annotations

import pytest

from llama_server import sample_trait
from personavec.errors import PersonavecError
from personavec.judges import HeuristicCoherenceJudge, Judge, OpenAIJudge, make_judge
from personavec.judges.embedding import EmbeddingJudge

LOCAL = "http://127.0.0.1:9/v1"


def test_openai_spec() -> None:
    trait = sample_trait()
    judge = make_judge("openai:gpt-4.1-mini", aspect="trait", trait=trait, base_url=LOCAL)
    assert isinstance(judge, OpenAIJudge) and isinstance(judge, Judge)
    assert judge.client.model == "gpt-4.1-mini" and judge.rubric == trait.rubric
    coherence = make_judge("openai:m", aspect="coherence", trait=None, base_url=LOCAL)
    assert coherence.aspect == "coherence"


def test_anthropic_spec_scores_from_text() -> None:
    judge = make_judge("anthropic:claude-x", aspect="coherence", base_url=LOCAL, api_key="k")
    assert isinstance(judge, OpenAIJudge)
    assert judge.client.provider == "anthropic" and not judge.options.logprobs


def test_offline_specs() -> None:
    assert isinstance(make_judge("heuristic", aspect="coherence"), HeuristicCoherenceJudge)
    assert isinstance(make_judge("embedding", aspect="trait", trait=sample_trait()), EmbeddingJudge)


def test_contrast_needs_a_model() -> None:
    with pytest.raises(PersonavecError, match="loaded model"):
        make_judge("contrast", aspect="trait", trait=sample_trait())


@pytest.mark.parametrize(
    ("spec", "aspect", "match"),
    [
        ("gpt4", "trait", "openai:MODEL, anthropic:MODEL, embedding, heuristic, contrast"),
        ("vllm:m", "trait", "unknown judge"),
        ("openai:", "trait", "unknown judge"),
        ("heuristic", "trait", "coherence only"),
        ("embedding", "coherence", "traits only"),
        ("contrast", "coherence", "traits only"),
        ("embedding", "trait", "needs a trait"),
        ("openai:m", "trait", "needs a trait"),
    ],
)
def test_bad_specs_are_one_line_errors(spec: str, aspect: str, match: str) -> None:
    with pytest.raises(PersonavecError, match=match) as info:
        make_judge(spec, aspect=aspect, base_url=LOCAL)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_contrast_spec_builds_on_a_real_model() -> None:
    from personavec.core.models import load_model

    loaded = load_model("smollm2", device="cpu")
    judge = make_judge("contrast", aspect="trait", trait=sample_trait(), loaded_model=loaded)
    assert isinstance(judge, Judge)
    assert judge.aspect == "trait"
    assert judge.identity.startswith("contrast:")


def test_contrast_pairs_limit_the_instruction_pairs() -> None:
    from personavec.judges.contrast import ContrastJudge
    from personavec.traits.library import load_trait
    from tiny_models import tiny_model

    loaded, trait = tiny_model("llama"), load_trait("evil")
    assert len(trait.instructions) > 1
    every = make_judge("contrast", aspect="trait", trait=trait, loaded_model=loaded)
    one = make_judge("contrast", aspect="trait", trait=trait, loaded_model=loaded, contrast_pairs=1)
    assert isinstance(every, ContrastJudge) and isinstance(one, ContrastJudge)
    assert (every.n_pairs, one.n_pairs) == (len(trait.instructions), 1)
    assert one.identity != every.identity


def test_the_default_contrast_judge_controls_for_the_other_shipped_traits() -> None:
    """``contrast`` subtracts the joined control of every other shipped trait; ``contrast-plain``
    is the judge before the correction (no control, the identity it always had)."""
    from personavec.judges.contrast import ContrastJudge
    from personavec.traits.library import list_traits, load_trait
    from tiny_models import tiny_model

    loaded, trait = tiny_model("llama"), load_trait("evil")
    default = make_judge("contrast", aspect="trait", trait=trait, loaded_model=loaded)
    plain = make_judge("contrast-plain", aspect="trait", trait=trait, loaded_model=loaded)
    assert isinstance(default, ContrastJudge) and isinstance(plain, ContrastJudge)
    assert [s.name for s in default.controls] == [t for t in list_traits() if t != "evil"]
    assert plain.controls == [] and plain.identity != default.identity
    assert plain.identity == ContrastJudge(loaded, trait).identity

"""Build a judge from a short spec string, as given on the command line.

========================  =================================================================
spec                      judge
========================  =================================================================
``openai:MODEL``          :class:`~personavec.judges.openai_judge.OpenAIJudge` (trait or
                          coherence; log-probability scoring)
``anthropic:MODEL``       the same judge on Anthropic's Messages API (scored from the text)
``embedding``             :class:`~personavec.judges.embedding.EmbeddingJudge` (trait only)
``heuristic``             :class:`~personavec.judges.coherence.HeuristicCoherenceJudge`
                          (coherence only)
``contrast``              ``ContrastJudge`` on a loaded local model (trait only), with the
                          other shipped traits as cross-trait control (docs/judging.md)
``contrast-plain``        the same without the control (the judge before the correction)
========================  =================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from personavec.errors import PersonavecError
from personavec.judges.base import Aspect, Judge
from personavec.traits.schema import TraitSpec

if TYPE_CHECKING:
    from personavec.core.models import LoadedModel

VALID_SPECS = (
    "openai:MODEL",
    "anthropic:MODEL",
    "embedding",
    "heuristic",
    "contrast",
    "contrast-plain",
)


def _unknown(spec: str) -> PersonavecError:
    return PersonavecError(f"unknown judge {spec!r}; use one of: {', '.join(VALID_SPECS)}")


def _need_trait(spec: str, trait: TraitSpec | None) -> TraitSpec:
    if trait is None:
        raise PersonavecError(f"the {spec} trait judge needs a trait; pass the trait name or file")
    return trait


def make_judge(
    spec: str,
    *,
    aspect: Aspect,
    trait: TraitSpec | None = None,
    loaded_model: LoadedModel | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
    timeout_s: float | None = None,
    contrast_pairs: int | None = None,
    contrast_reference: str | None = None,
) -> Judge:
    """The judge named by ``spec`` for ``aspect`` (table in the module docstring).

    Args:
        spec: ``openai:MODEL``, ``anthropic:MODEL``, ``embedding``, ``heuristic`` or
            ``contrast``.
        aspect: ``"trait"`` or ``"coherence"``.
        trait: Required for trait judges (rubric / examples).
        loaded_model: Required for ``contrast``.
        base_url, api_key, concurrency, timeout_s: For LLM judges (defaults from the
            environment; ``timeout_s`` seconds per request, see ``llm_client``).
        contrast_pairs: For ``contrast``: use only the trait's first instruction pairs (None:
            all; fewer is faster and noisier).
        contrast_reference: For ``contrast``: ``"neg"`` or ``"neutral"`` (see
            :class:`~personavec.judges.contrast.ContrastJudge`; None: its default).
    """
    if aspect not in ("trait", "coherence"):
        raise PersonavecError(f"unknown judge aspect {aspect!r}; use 'trait' or 'coherence'")
    name = spec.strip()
    provider, sep, model = name.partition(":")
    if sep:
        if provider not in ("openai", "anthropic") or not model.strip():
            raise _unknown(spec)
        return _llm_judge(
            provider,
            model.strip(),
            aspect,
            trait,
            base_url,
            api_key,
            concurrency=concurrency,
            timeout_s=timeout_s,
        )
    if name == "heuristic":
        return _heuristic_judge(aspect)
    if name in ("embedding", "contrast", "contrast-plain"):
        return _offline_trait_judge(
            name, aspect, trait, loaded_model, contrast_pairs, contrast_reference
        )
    raise _unknown(spec)


def _llm_judge(
    provider: str,
    model: str,
    aspect: Aspect,
    trait: TraitSpec | None,
    base_url: str | None,
    api_key: str | None,
    *,
    concurrency: int,
    timeout_s: float | None,
) -> Judge:
    from personavec.judges.openai_judge import OpenAIJudge

    return OpenAIJudge(
        model,
        aspect=aspect,
        trait=_need_trait(f"{provider}:{model}", trait) if aspect == "trait" else trait,
        base_url=base_url,
        api_key=api_key,
        concurrency=concurrency,
        timeout_s=timeout_s,
        provider="openai" if provider == "openai" else "anthropic",
    )


def _heuristic_judge(aspect: Aspect) -> Judge:
    if aspect != "coherence":
        raise PersonavecError(
            "the heuristic judge rates coherence only; for traits use embedding, contrast "
            "or openai:MODEL"
        )
    from personavec.judges.coherence import HeuristicCoherenceJudge

    return HeuristicCoherenceJudge()


def _offline_trait_judge(
    name: str,
    aspect: Aspect,
    trait: TraitSpec | None,
    loaded_model: LoadedModel | None,
    contrast_pairs: int | None = None,
    contrast_reference: str | None = None,
) -> Judge:
    """``embedding`` or ``contrast``: trait judges that run on this machine."""
    if aspect != "trait":
        raise PersonavecError(
            f"the {name} judge rates traits only; for coherence use heuristic or openai:MODEL"
        )
    if name == "embedding":
        from personavec.judges.embedding import EmbeddingJudge

        return EmbeddingJudge(_need_trait(name, trait))
    if loaded_model is None:
        raise PersonavecError("the contrast judge needs a loaded model; pass --model")
    try:
        from personavec.judges.contrast import ContrastJudge  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise PersonavecError(
            f"the contrast judge is unavailable in this installation ({exc}); "
            "use embedding or openai:MODEL"
        ) from exc
    options: dict[str, Any] = {"max_pairs": contrast_pairs}
    if name == "contrast":
        from personavec.traits.library import list_traits, load_trait

        options["controls"] = [load_trait(n) for n in list_traits()]
    if contrast_reference is not None:
        options["reference"] = contrast_reference
    judge: Judge = ContrastJudge(loaded_model, _need_trait(name, trait), **options)
    return judge

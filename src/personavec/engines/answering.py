"""Answer prompts with a model, optionally steered: the library side of ``personavec generate``."""

from __future__ import annotations

from collections.abc import Sequence

from personavec.core.models import LoadedModel, Message, chat_messages
from personavec.engines.factory import Steering, open_engine
from personavec.engines.generation import GenerationRequest, SamplingConfig
from personavec.errors import PersonavecError


def answer_chats(
    loaded: LoadedModel,
    chats: Sequence[Sequence[Message]],
    config: SamplingConfig,
    steering: Steering = None,
    *,
    ids: Sequence[str] | None = None,
    engine: str = "hf",
) -> list[str]:
    """The first sample's answer to each chat, in batched generation under ``steering``, on
    ``engine`` (``hf`` or ``vllm``, see :func:`personavec.engines.factory.open_engine`)."""
    if not chats:
        return []
    for chat in chats:
        if not chat or chat[-1].get("role") != "user":
            raise PersonavecError("every chat must end with a user message")
    keys: Sequence[str | None] = ids if ids is not None else [None] * len(chats)
    items = [GenerationRequest(list(chat), key) for chat, key in zip(chats, keys, strict=True)]
    with open_engine(engine, loaded, steering) as generator:
        generations = generator.generate(items, config)
    return [g.response_text.strip() for g in generations if g.sample_index == 0]


def generate_answers(
    loaded: LoadedModel,
    prompts: Sequence[str],
    config: SamplingConfig,
    *,
    system: str | None = None,
    steering: Steering = None,
    engine: str = "hf",
) -> list[str]:
    """One answer per prompt (the first sample), steered when ``steering`` is given."""
    chats = [chat_messages(p, system=system) for p in prompts]
    return answer_chats(loaded, chats, config, steering, engine=engine)

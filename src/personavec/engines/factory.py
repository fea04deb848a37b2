"""The one way commands get a generation engine: :func:`open_engine` (``--engine hf|vllm``).

``hf`` is transformers' ``generate`` (the exact reference) with the steering installed as hooks
on the model for the block; ``vllm`` is :class:`~personavec.engines.vllm_engine.VLLMEngine`,
which carries the same settings per request inside vLLM. Both yield an object with the engine
protocol's ``generate(requests, config)``. vLLM is imported only when asked for; without it the
error names the install command.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting, apply_settings
from personavec.engines.generation import GenerationEngine, HFEngine
from personavec.engines.vllm_engine import INSTALL_HINT, VLLMEngine
from personavec.errors import PersonavecError

EngineKind = Literal["hf", "vllm"]
ENGINE_KINDS: tuple[str, ...] = get_args(EngineKind)
ENGINE_HELP = (
    "generation engine: hf (transformers, the exact reference) or vllm (needs "
    "`make install-vllm`; capture and judging stay on hf)"
)


def check_engine(kind: str) -> EngineKind:
    """``kind`` when it names an installed engine; otherwise a one-line error (checked before
    any model loads; a missing vLLM names the install command)."""
    if kind not in ENGINE_KINDS:
        raise PersonavecError(f"unknown engine {kind!r}; use {' or '.join(ENGINE_KINDS)}")
    if kind == "vllm" and importlib.util.find_spec("vllm") is None:
        raise PersonavecError(INSTALL_HINT)
    return kind  # type: ignore[return-value]


def make_engine(kind: str, loaded: LoadedModel, *, show_progress: bool = False) -> GenerationEngine:
    """An unsteered engine of ``kind`` (``hf`` or ``vllm``) for ``loaded``."""
    if check_engine(kind) == "vllm":
        return VLLMEngine(loaded)
    return HFEngine(loaded, show_progress=show_progress)


Steering = SteeringSetting | Sequence[SteeringSetting] | None
"""One setting, several applied together, or none (unsteered)."""


def as_settings(steering: Steering) -> list[SteeringSetting]:
    """``steering`` as a list of settings (empty when there is none)."""
    if steering is None:
        return []
    if isinstance(steering, SteeringSetting):
        return [steering]
    return list(steering)


@contextlib.contextmanager
def steering_context(loaded: LoadedModel, steering: Steering) -> Iterator[None]:
    """Apply every setting at once on the HF model for the ``with`` block (nothing when there
    is none)."""
    settings = as_settings(steering)
    if not settings:
        yield
        return
    with apply_settings(loaded.model, settings):
        yield


@contextlib.contextmanager
def open_engine(
    kind: str,
    loaded: LoadedModel,
    steering: Steering = None,
    *,
    show_progress: bool = False,
) -> Iterator[GenerationEngine]:
    """An engine that generates under ``steering`` (all settings at once) for the block.

    Args:
        kind: ``hf`` or ``vllm``.
        loaded: the model; the vLLM engine loads the same checkpoint in the same dtype.
        steering: one setting, several applied together, or None (unsteered).
        show_progress: a progress bar (HF engine).
    """
    if check_engine(kind) == "vllm":
        yield VLLMEngine(loaded, steering=as_settings(steering))
        return
    with steering_context(loaded, steering):
        yield HFEngine(loaded, show_progress=show_progress)

"""Shared pieces of the vLLM tests: whether vLLM can run here, and the reference HF runs.

In the main venv vLLM is not installed and the vLLM tests skip; ``make vllm-test`` runs them in
``.venv-vllm`` with ``PERSONAVEC_REQUIRE_VLLM=1``, which turns that skip into an error, so the
parity tests cannot silently stop running.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import pytest

from personavec.core.models import LoadedModel
from personavec.core.setting import SteeringSetting, apply_settings
from personavec.engines.generation import GenerationRequest, HFEngine, SamplingConfig


def vllm_available() -> bool:
    """True when ``vllm`` is importable; raises under ``PERSONAVEC_REQUIRE_VLLM=1`` otherwise."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM's CPU backend otherwise reserves most of the machine's RAM for its KV cache.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if importlib.util.find_spec("vllm") is not None:
        return True
    if os.environ.get("PERSONAVEC_REQUIRE_VLLM") == "1":
        raise RuntimeError("PERSONAVEC_REQUIRE_VLLM=1 but vllm is not importable here")
    return False


needs_vllm = pytest.mark.skipif(
    not vllm_available(), reason="vllm is not installed here (make install-vllm; make vllm-test)"
)

GREEDY = SamplingConfig(max_new_tokens=24, temperature=0.0, batch_size=8)


def hf_tokens(
    loaded: LoadedModel,
    requests: Sequence[GenerationRequest],
    steering: Sequence[SteeringSetting] = (),
    config: SamplingConfig = GREEDY,
) -> list[list[int]]:
    """The HF engine's response ids, each request alone (the exact reference)."""
    out = []
    for request in requests:
        if steering:
            with apply_settings(loaded.model, list(steering)):
                generations = HFEngine(loaded).generate([request], config)
        else:
            generations = HFEngine(loaded).generate([request], config)
        out.append(generations[0].response_token_ids)
    return out

"""Generation with vLLM: the engine protocol plus per-request steering, readings and guards.

:class:`VLLMEngine` implements :class:`~personavec.engines.generation.GenerationEngine` on a
vLLM ``LLMEngine`` run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, eager mode), so
the hooks of :mod:`personavec.engines.vllm_hooks` sit on the very model that decodes. Each
(request, sample) is one vLLM request; requests with different :class:`RequestControls` are
decoded together in vLLM's continuous batches and each gets its own steering.

Prefix caching stays on and is never wrong: a request whose controls change the residual stream
carries a ``cache_salt`` that hashes every change (:meth:`RequestControls.salt`), so KV computed
under one setting is reused only under the same setting; unsteered and monitor-only requests
share the plain cache.

Sampling: greedy decoding (``temperature == 0``) gives the HF engine's tokens (the parity
tests). With ``temperature > 0`` each sample is seeded with the HF engine's per-sample seed
(:func:`~personavec.engines.sampling.sample_seed`), so results are reproducible, but vLLM's
sampler draws other random numbers than the HF engine's Gumbel sampler. ``batch_size`` is the
HF engine's knob: vLLM schedules its own batches. The engine is not thread-safe; one caller
(e.g. the server's worker thread) drives it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from personavec.core.models import LoadedModel, _resolve_source, encode_prompt, format_chat
from personavec.core.setting import SteeringSetting
from personavec.core.steering import non_finite_error
from personavec.engines.generation import (
    FinishReason,
    Generation,
    GenerationRequest,
    ProgressCallback,
    SamplingConfig,
    _key,
    stop_token_ids,
)
from personavec.engines.limits import check_context_length, context_length
from personavec.engines.sampling import sample_seed
from personavec.engines.vllm_hooks import (
    REQUEST_KEY,
    RequestControls,
    RequestRecord,
    VLLMHooks,
)
from personavec.errors import PersonavecError
from personavec.monitor.specs import Reading

INSTALL_HINT = (
    "vLLM is not installed; run `make install-vllm` (CPU, a second venv .venv-vllm) or "
    "`pip install 'personavec[vllm]'` (CUDA)"
)


def import_vllm() -> Any:
    """The ``vllm`` module, or a one-line error naming the install command."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # GiB of KV cache on vLLM's CPU backend (ignored on GPUs); unset, it reserves most of RAM.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines drown our output
    try:
        import vllm  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise PersonavecError(INSTALL_HINT) from exc
    return vllm


@dataclass(frozen=True)
class VLLMOptions:
    """How to start vLLM.

    Attributes:
        max_model_len: most positions per sequence (default: the model's context, at most 4096).
        tensor_parallel_size: GPUs per model (needs multiprocessing workers: not supported by
            the in-process hooks yet, see docs/engines.md).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (GPU only).
    """

    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85


@dataclass(frozen=True)
class VLLMResult:
    """One sample: the generation, its readings and where a guard acted.

    Attributes:
        generation: as the HF engine returns it.
        readings: per token, in order: the last prompt token, then each generated token that
            was fed back (``position`` counts from the sequence's first token).
        guarded: positions where a guard changed the stream.
        cached_tokens: prompt tokens vLLM took from its prefix cache.
    """

    generation: Generation
    readings: list[Reading] = field(default_factory=list)
    guarded: list[int] = field(default_factory=list)
    cached_tokens: int = 0


class VLLMRuntime:
    """One in-process vLLM engine for one checkpoint, with its hooks installed once."""

    def __init__(self, location: str, dtype: str, options: VLLMOptions) -> None:
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            raise PersonavecError(
                "personavec runs vLLM in-process; set VLLM_ENABLE_V1_MULTIPROCESSING=0"
            )
        if options.tensor_parallel_size != 1:
            raise PersonavecError(
                "the vLLM engine steers in-process on one device; use --tensor-parallel-size 1 "
                "(see docs/engines.md for several GPUs)"
            )
        vllm = import_vllm()
        self.llm = vllm.LLM(
            model=location,
            dtype=dtype,
            enforce_eager=True,
            max_model_len=options.max_model_len,
            enable_prefix_caching=True,
            generation_config="vllm",
            gpu_memory_utilization=options.gpu_memory_utilization,
            seed=0,
        )
        self.engine = self.llm.llm_engine
        self.max_model_len = int(self.engine.model_config.max_model_len)
        runner = _model_runner(self.engine)
        self.hooks = VLLMHooks(runner.get_model(), runner)
        self._ids = itertools.count()

    def new_key(self) -> str:
        """A request key unique in this process."""
        return f"pv-{next(self._ids)}"

    def sampling_params(
        self, config: SamplingConfig, seed: int | None, key: str, stops: Any
    ) -> Any:
        vllm = import_vllm()
        return vllm.SamplingParams(
            n=1,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=None if config.greedy else seed,
            max_tokens=config.max_new_tokens,
            stop_token_ids=list(stops),
            detokenize=False,
            extra_args={REQUEST_KEY: key},
        )

    def add(self, key: str, prompt_ids: list[int], params: Any, controls: RequestControls) -> None:
        """Queue one request (tracked by the hooks unless ``controls`` is empty)."""
        prompt: dict[str, Any] = {"prompt_token_ids": list(prompt_ids)}
        salt = controls.salt()
        if salt is not None:
            prompt["cache_salt"] = salt
        if not controls.empty:
            self.hooks.track(key, controls)
        self.engine.add_request(key, prompt, params)

    def step(self) -> list[Any]:
        """One engine step: the finished request outputs."""
        return [out for out in self.engine.step() if out.finished]

    def abort(self, keys: Sequence[str]) -> None:
        """Drop ``keys`` from the engine and the hooks."""
        self.engine.abort_request(list(keys))
        self.hooks.release(keys)

    def busy(self) -> bool:
        return bool(self.engine.has_unfinished_requests())


def _model_runner(engine: Any) -> Any:
    """The in-process model runner behind ``engine`` (LLMEngine → core → executor → worker)."""
    try:
        worker = engine.engine_core.engine_core.model_executor.driver_worker.worker
        return worker.model_runner
    except AttributeError as exc:
        raise PersonavecError(
            "cannot reach vLLM's model runner in this process; run with "
            "VLLM_ENABLE_V1_MULTIPROCESSING=0 and one device"
        ) from exc


_RUNTIMES: dict[tuple[str, str, VLLMOptions], VLLMRuntime] = {}


def runtime_for(loaded: LoadedModel, options: VLLMOptions | None = None) -> VLLMRuntime:
    """The process's vLLM runtime for ``loaded``'s checkpoint and dtype (started once)."""
    options = options or VLLMOptions()
    if options.max_model_len is None:
        limit = context_length(loaded) or 4096
        options = replace(options, max_model_len=min(limit, 4096))
    options = _fit_gpu_memory(options)
    location, _ = _resolve_source(loaded.spec)
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    key = (location, dtype, options)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = VLLMRuntime(location, dtype, options)
    return _RUNTIMES[key]


def _fit_gpu_memory(options: VLLMOptions) -> VLLMOptions:
    """On a GPU, at most the memory still free (less 5 %) for vLLM: the HF copy of the model
    (capture, judges) is already there, and vLLM refuses to start when it asks for more than is
    free. CPU: unchanged."""
    import torch

    if not torch.cuda.is_available():
        return options
    free, total = torch.cuda.mem_get_info()
    limit = round(free / total - 0.05, 3)
    if options.gpu_memory_utilization <= limit:
        return options
    if limit < 0.05:
        raise PersonavecError(
            f"only {free / 2**30:.1f} GiB of GPU memory is free for vLLM; free some or use "
            "--engine hf"
        )
    return replace(options, gpu_memory_utilization=limit)


def controls_for(steering: Sequence[SteeringSetting]) -> RequestControls:
    """The controls of settings applied together (their interventions in order)."""
    return RequestControls(tuple(i for s in steering for i in s.interventions()))


@dataclass(frozen=True)
class _Unit:
    key: str
    request_index: int
    sample_index: int
    prompt_ids: list[int]
    seed: int
    controls: RequestControls


class VLLMEngine:
    """Batched chat generation on vLLM, each request with its own controls.

    Args:
        loaded: the model (its tokenizer and identity; vLLM loads its own copy of the weights
            from the same checkpoint, in the same dtype).
        steering: settings applied to every request of :meth:`generate` (like the HF engine
            inside a steering context).
        options: how to start vLLM (the runtime is shared per checkpoint in this process).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        steering: Sequence[SteeringSetting] = (),
        options: VLLMOptions | None = None,
    ) -> None:
        self.loaded = loaded
        for setting in steering:
            setting.check_compatible(loaded.model)
        self.controls = controls_for(steering)
        self.stop_ids = stop_token_ids(loaded)
        if not self.stop_ids:
            raise PersonavecError(f"{loaded.model_id} has no EOS or end-of-turn token")
        self.runtime = runtime_for(loaded, options)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        config: SamplingConfig,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[Generation]:
        """Samples ordered by ``(request_index, sample_index)``: ``len(requests) * n_samples``."""
        results = self.run(requests, config, [self.controls] * len(requests), progress=progress)
        return [r.generation for r in results]

    def run(
        self,
        requests: Sequence[GenerationRequest],
        config: SamplingConfig,
        controls: Sequence[RequestControls],
        *,
        progress: ProgressCallback | None = None,
    ) -> list[VLLMResult]:
        """Like :meth:`generate`, with ``controls[i]`` for request ``i`` and its readings."""
        if len(controls) != len(requests):
            raise ValueError("give one RequestControls per request")
        tokenizer = self.loaded.tokenizer
        prompts = [format_chat(tokenizer, r.messages) for r in requests]
        prompt_ids = [encode_prompt(tokenizer, r.messages) for r in requests]
        self._check_length(prompt_ids, config.max_new_tokens)
        distinct = 1 if config.greedy else config.n_samples
        units = [
            _Unit(
                self.runtime.new_key(),
                i,
                s,
                prompt_ids[i],
                sample_seed(config.seed, _key(r, i), s),
                controls[i],
            )
            for i, r in enumerate(requests)
            for s in range(distinct)
        ]
        done = self._decode(units, config, progress)
        out: list[VLLMResult] = []
        for i in range(len(requests)):
            for s in range(config.n_samples):
                unit = units[i * distinct + (0 if config.greedy else s)]
                ids, reason, cached, record = done[unit.key]
                text = str(tokenizer.decode(ids, skip_special_tokens=True))
                generation = Generation(i, s, prompts[i], text, list(ids), reason)
                out.append(_result(generation, record, len(unit.prompt_ids), cached))
        return out

    def _check_length(self, prompt_ids: list[list[int]], max_new_tokens: int) -> None:
        check_context_length(self.loaded, prompt_ids, max_new_tokens)
        limit = self.runtime.max_model_len
        longest = max((len(p) for p in prompt_ids), default=0)
        if longest + max_new_tokens > limit:
            raise PersonavecError(
                f"a prompt of {longest} tokens plus max_new_tokens {max_new_tokens} exceeds vLLM's "
                f"max_model_len {limit}; shorten the prompt or lower max_new_tokens"
            )

    def _decode(
        self, units: list[_Unit], config: SamplingConfig, progress: ProgressCallback | None
    ) -> dict[str, tuple[list[int], FinishReason, int, RequestRecord]]:
        runtime = self.runtime
        if runtime.busy():
            raise PersonavecError("the vLLM engine is busy with another call; wait for it")
        stops = set(self.stop_ids)
        finished: dict[str, tuple[list[int], FinishReason, int]] = {}
        keys = [u.key for u in units]
        try:
            for unit in units:
                params = runtime.sampling_params(config, unit.seed, unit.key, self.stop_ids)
                runtime.add(unit.key, unit.prompt_ids, params, unit.controls)
            while runtime.busy():
                for output in runtime.step():
                    ids, reason = _ids_and_reason(output.outputs[0], stops)
                    cached = int(getattr(output, "num_cached_tokens", 0) or 0)
                    finished[output.request_id] = (ids, reason, cached)
                    if progress is not None:
                        progress(len(finished), len(units))
        except BaseException:
            runtime.abort([k for k in keys if k not in finished])
            raise
        records = runtime.hooks.release(keys)
        check_served([records.get(u.key) for u in units if not u.controls.empty])
        broken = [u for u in units if records.get(u.key, RequestRecord()).non_finite]
        if broken:
            raise non_finite_error(list(broken[0].controls.interventions))
        return {k: (*finished[k], records.get(k, RequestRecord())) for k in keys}


NOT_SERVED = (
    "vLLM ran a request without its steering, readings or guards (this model's layers do not "
    "pass the token positions personavec reads); use --engine hf"
)


def check_served(records: Sequence[RequestRecord | None]) -> None:
    """A one-line error when a request with controls never met the hooks: never an answer
    that silently lacks its steering."""
    if any(record is None or not record.served for record in records):
        raise PersonavecError(NOT_SERVED)


def _ids_and_reason(completion: Any, stops: set[int]) -> tuple[list[int], FinishReason]:
    ids = [int(t) for t in completion.token_ids]
    if completion.finish_reason == "stop":
        if ids and ids[-1] in stops:
            ids = ids[:-1]
        return ids, "stop"
    return ids, "length"


def _result(
    generation: Generation, record: RequestRecord, prompt_len: int, cached: int
) -> VLLMResult:
    readings = [
        Reading(position, position < prompt_len, values)
        for position, values in sorted(record.readings.items())
    ]
    return VLLMResult(generation, readings, sorted(record.guarded), cached)

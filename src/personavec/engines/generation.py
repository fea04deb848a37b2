"""Batched sampling of chat responses behind an engine interface.

:class:`GenerationEngine` is what the pipeline talks to; :class:`HFEngine` implements it with
transformers' ``model.generate`` (other engines — llama.cpp, vLLM — can implement the same
protocol). The HF engine works inside a steering context: it always passes ``attention_mask``
to ``generate``, lets transformers derive position ids from it, and uses the default KV cache.

Determinism (HF engine)
-----------------------
Sampling does not use torch's global RNG. Each sample ``(request, sample_index)`` owns a private
random stream seeded by ``sha256(seed, key, sample_index)``, where ``key`` is the request's
``id`` when given and its index in the request list otherwise. At every decoding step a
request's row draws Gumbel noise from its own stream only, adds it to its temperature-scaled,
top-p-filtered logits and takes the argmax (the Gumbel-max trick, an exact categorical sample).
Hence:

* same seed + same requests + same ``batch_size`` (same model, device and dtype) →
  bit-identical outputs on CPU (on GPU, as far as its kernels are deterministic);
* the random numbers a sample consumes do not depend on which other requests share its batch,
  on ``batch_size`` or on the order of the request list (when ids are given). Outputs then agree
  across batch compositions up to floating-point differences in the logits caused by padding,
  which can flip a near-tie; in fp32 on CPU this is rare but not ruled out;
* ``temperature == 0`` is greedy decoding (no randomness; ``n_samples`` copies are identical and
  computed once).

Only :class:`SamplingConfig` decides how tokens are chosen: sampling settings in the model's own
``generation_config`` (temperature, top-k, repetition penalty, …) are ignored. A response ends at
the first stop token — any EOS id of the model or tokenizer, or the chat template's end-of-turn
token (``<|im_end|>`` for SmolLM2) — or after ``max_new_tokens`` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from rich.progress import Progress
from transformers import GenerationConfig, LogitsProcessorList

from personavec.core.models import LoadedModel, Message, encode_prompt, format_chat
from personavec.core.padding import left_pad
from personavec.engines.limits import check_context_length
from personavec.engines.sampling import GumbelSampler, sample_seed
from personavec.errors import PersonavecError

FinishReason = Literal["stop", "length"]
ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after every batch, counting sequences actually generated
(with ``temperature == 0`` one per request, since greedy copies are computed once)."""

# End-of-turn markers of common chat templates; used when the template cannot be probed.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class SamplingConfigError(PersonavecError, ValueError):
    """A sampling setting is out of range."""


@dataclass(frozen=True)
class GenerationRequest:
    """One chat to answer: ``messages`` in chat format, ending with the user's turn.

    ``id`` (optional) names the request; when given it also keys the request's random stream,
    so the same id and messages give the same samples wherever the request sits in the list.
    """

    messages: list[Message]
    id: str | None = None


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample.

    Attributes:
        max_new_tokens: most tokens generated per sample (the end-of-turn token included).
        temperature: softmax temperature; ``0`` means greedy decoding.
        top_p: nucleus sampling mass in (0, 1]; ``1`` keeps the whole vocabulary.
        n_samples: samples per request.
        seed: base seed of every sample's private random stream.
        batch_size: sequences (request × sample) per forward pass.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    n_samples: int = 1
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SamplingConfigError(
                f"max_new_tokens must be at least 1, got {self.max_new_tokens}"
            )
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SamplingConfigError(
                f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}"
            )
        if not (0 < self.top_p <= 1):
            raise SamplingConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n_samples < 1:
            raise SamplingConfigError(f"n_samples must be at least 1, got {self.n_samples}")
        if self.seed < 0:
            raise SamplingConfigError(f"seed must be >= 0, got {self.seed}")
        if self.batch_size < 1:
            raise SamplingConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    """One sampled response.

    Attributes:
        request_index: index of the request in the list passed to ``generate``.
        sample_index: 0 … ``n_samples - 1``.
        prompt_text: the chat-formatted prompt the model saw (ends with the assistant header).
        response_text: decoded response, special tokens removed.
        response_token_ids: the generated ids, without padding and without the stop token.
        finish_reason: ``"stop"`` (end-of-turn / EOS generated) or ``"length"``.
    """

    request_index: int
    sample_index: int
    prompt_text: str
    response_text: str
    response_token_ids: list[int]
    finish_reason: FinishReason


class GenerationEngine(Protocol):
    """Answers chat requests in batches."""

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        config: SamplingConfig,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[Generation]:
        """Samples ordered by ``(request_index, sample_index)``: ``len(requests) * n_samples``."""
        ...


def stop_token_ids(loaded: LoadedModel) -> list[int]:
    """Ids that end a response: EOS ids of the model and tokenizer, and the template's end of turn.

    The end-of-turn token is found by rendering a chat with a known assistant reply and taking
    the special token that follows it; known markers (``<|im_end|>``, ``<|eot_id|>``, …) present
    in the vocabulary are a fallback.
    """
    tokenizer = loaded.tokenizer
    ids: set[int] = set()
    eos = getattr(loaded.model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    end_of_turn = _template_end_of_turn(loaded)
    if end_of_turn is not None:
        ids.add(end_of_turn)
    elif getattr(tokenizer, "chat_template", None):
        vocab = tokenizer.get_vocab()
        ids.update(vocab[t] for t in _END_OF_TURN_TOKENS if t in vocab)
    return sorted(ids)


def _template_end_of_turn(loaded: LoadedModel) -> int | None:
    tokenizer = loaded.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "Zebra marker 42."
    messages: list[Message] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": marker},
    ]
    try:
        text = format_chat(tokenizer, messages, add_generation_prompt=False)
    except Exception:  # templates may reject unusual chats; the fallback list covers them
        return None
    position = text.rfind(marker)
    if position < 0:
        return None
    tail = tokenizer(text[position + len(marker) :], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    for token_id in tail:
        if int(token_id) in special:
            return int(token_id)
        if str(tokenizer.decode([token_id])).strip():
            return None  # ordinary text before any special token: no end-of-turn marker
    return None


def neutral_generation_config(
    max_new_tokens: int, stop_ids: Sequence[int], pad_id: int
) -> GenerationConfig:
    """Greedy search with every other knob neutral; sampling is added by a logits processor.

    Neutral values keep the model's own ``generation_config`` (e.g. a hub model's
    ``repetition_penalty`` or ``top_k``) from leaking in, so :class:`SamplingConfig` alone decides.
    They are transformers' defaults (``top_k=50`` is unused by greedy search but silences a
    warning that any other value triggers).
    """
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        min_p=None,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
    )


@dataclass(frozen=True)
class _Unit:
    """One sequence to generate: a (request, sample) pair and its prompt ids."""

    request_index: int
    sample_index: int
    prompt_ids: list[int]
    seed: int


class HFEngine:
    """Batched generation with a transformers model (see the module docstring for determinism).

    Prompts are left-padded and sorted by length into batches of ``config.batch_size`` to limit
    padding; the ``n_samples`` samples of a request are extra rows of the same batch.
    """

    def __init__(self, loaded: LoadedModel, *, show_progress: bool = False) -> None:
        self.loaded = loaded
        self.show_progress = show_progress
        self.stop_ids = stop_token_ids(loaded)
        if not self.stop_ids:
            raise PersonavecError(
                f"{loaded.model_id} has no EOS or end-of-turn token; set tokenizer.eos_token"
            )
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_ids[0]

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        config: SamplingConfig,
        *,
        progress: ProgressCallback | None = None,
    ) -> list[Generation]:
        """Samples ordered by ``(request_index, sample_index)``: ``len(requests) * n_samples``."""
        tokenizer = self.loaded.tokenizer
        prompts = [format_chat(tokenizer, r.messages) for r in requests]
        prompt_ids = [encode_prompt(tokenizer, r.messages) for r in requests]
        check_context_length(self.loaded, prompt_ids, config.max_new_tokens)
        distinct = 1 if config.greedy else config.n_samples
        units = [
            _Unit(i, s, prompt_ids[i], sample_seed(config.seed, _key(r, i), s))
            for i, r in enumerate(requests)
            for s in range(distinct)
        ]
        # Stable sort: longest prompts first, so the slowest batch fails fast on memory.
        units.sort(key=lambda u: -len(u.prompt_ids))
        batches = [
            units[start : start + config.batch_size]
            for start in range(0, len(units), config.batch_size)
        ]
        results: dict[tuple[int, int], tuple[list[int], FinishReason]] = {}
        with _progress_reporter(len(units), progress, self.show_progress) as report:
            for batch in batches:
                outputs = self.generate_batch(
                    [u.prompt_ids for u in batch], config, seeds=[u.seed for u in batch]
                )
                for unit, output in zip(batch, outputs, strict=True):
                    results[(unit.request_index, unit.sample_index)] = output
                report(len(batch))
        generations = []
        for i in range(len(requests)):
            for s in range(config.n_samples):
                ids, reason = results[(i, 0 if config.greedy else s)]
                text = str(tokenizer.decode(ids, skip_special_tokens=True))
                generations.append(Generation(i, s, prompts[i], text, list(ids), reason))
        return generations

    def generate_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        config: SamplingConfig,
        *,
        seeds: Sequence[int] | None = None,
        streamer: Any = None,
    ) -> list[tuple[list[int], FinishReason]]:
        """Answer prompts (token ids) in one left-padded batch, in order.

        Args:
            prompt_ids: chat-formatted prompts, one list of ids per row.
            config: ``max_new_tokens``, ``temperature`` and ``top_p`` are used.
            seeds: one private-stream seed per row (see :func:`sample_seed`); needed unless
                ``config`` is greedy.
            streamer: a transformers streamer, passed to ``generate``.
        Returns:
            Per row: the generated ids without the stop token, and the finish reason.
        """
        device = self.loaded.device
        # Position ids are left to generate(), which derives them from the attention mask.
        input_ids, attention_mask, _ = left_pad(prompt_ids, self.pad_id)
        width = input_ids.shape[1]
        generation_config = neutral_generation_config(
            config.max_new_tokens, self.stop_ids, self.pad_id
        )
        processors = LogitsProcessorList()
        if not config.greedy:
            if seeds is None or len(seeds) != len(prompt_ids):
                raise ValueError("sampling needs one seed per prompt; pass seeds")
            processors.append(GumbelSampler(seeds, config.temperature, config.top_p))
        with torch.no_grad():
            output = self.loaded.model.generate(  # type: ignore[operator]
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=generation_config,
                logits_processor=processors,
                streamer=streamer,
            )
        stops = set(self.stop_ids)
        results: list[tuple[list[int], FinishReason]] = []
        for row in output[:, width:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stops), None)
            if cut is None:
                results.append(([int(t) for t in row], "length"))
            else:
                results.append(([int(t) for t in row[:cut]], "stop"))
        return results


def _key(request: GenerationRequest, index: int) -> str:
    return f"id:{request.id}" if request.id is not None else f"index:{index}"


@contextmanager
def _progress_reporter(
    total: int, callback: ProgressCallback | None, show: bool
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``, which feeds a callback and/or a transient rich progress bar."""
    done = 0
    bar = Progress(transient=True) if show else None
    task = bar.add_task("generating", total=total) if bar is not None else None

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if bar is not None and task is not None:
            bar.update(task, completed=done)
        if callback is not None:
            callback(done, total)

    if bar is None:
        yield advance
        return
    with bar:
        yield advance

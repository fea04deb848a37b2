"""Teacher-forced answer log-probabilities that compute each shared prompt once.

Every answer judged under the same (system prompt, question) shares that whole prompt. A batch
of answers runs each of its distinct prompts once (left-padded, with position ids) into a KV
cache, selects each answer's prompt row of that cache, and runs the answers right-padded after
it (positions continue from each prompt's length, padding is masked, so every row reads exactly
as ``prompt + answer`` alone). The LM head is applied only at real answer positions (the
prompt's last position predicts the first answer token), never at padding or prompt positions.

Scores equal the one-sequence-at-a-time path up to float rounding (tested: tiny models and
SmolLM2, |Δ| < 1e-4 nats/token in float32).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from personavec.core.models import LoadedModel
from personavec.core.padding import left_pad

# Models whose logits are not simply ``lm_head(last_hidden_state)``.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def head_is_plain(model: torch.nn.Module) -> bool:
    """True when logits are ``lm_head(base_model(...).last_hidden_state)`` (no softcap/scale)."""
    net: Any = model
    config = getattr(net, "config", None)
    if any(getattr(config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return False
    return net.get_output_embeddings() is not None and net.base_model is not net


HEAD_ROWS = 1024
"""Answer positions per LM-head call (bounds the ``rows × vocab`` logits held at once)."""


def _cache_argument(base: Any) -> str:
    # transformers renamed ``past_key_values`` to ``cache`` (5.2x); use whichever it takes.
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _token_logprobs(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each row of ``hidden`` ``(n, d)``: float32 CPU ``(n,)``, in chunks."""
    out = []
    for start in range(0, hidden.shape[0], HEAD_ROWS):
        logits = head(hidden[start : start + HEAD_ROWS]).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = targets[start : start + HEAD_ROWS].unsqueeze(-1)
        out.append(logprobs.gather(-1, chosen).squeeze(-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def _score_batch(
    net: Any, work: Sequence[tuple[tuple[int, ...], list[int]]], pad_id: int, device: Any
) -> list[torch.Tensor]:
    """One pass over the distinct prompts of ``work`` ((prompt, answer) rows), one over the
    answers after them (each row reads its own prompt's cache), LM head at answer tokens only."""
    base, head = net.base_model, net.get_output_embeddings()
    prompts = list(dict.fromkeys(prompt for prompt, _ in work))
    index = {prompt: k for k, prompt in enumerate(prompts)}
    ids, prompt_mask, positions = left_pad(prompts, pad_id)
    out = base(
        input_ids=ids.to(device),
        attention_mask=prompt_mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
    )
    cache = getattr(out, "cache", None) or out.past_key_values
    rows = torch.tensor([index[prompt] for prompt, _ in work])
    cache.batch_select_indices(rows.to(device))
    answers = [answer for _, answer in work]
    width = max(len(a) for a in answers)
    answer_ids = torch.full((len(work), width), pad_id, dtype=torch.long)
    answer_mask = torch.zeros((len(work), width), dtype=torch.long)
    for i, answer in enumerate(answers):
        answer_ids[i, : len(answer)] = torch.tensor(answer)
        answer_mask[i, : len(answer)] = 1
    lengths = torch.tensor([len(p) for p in prompts])[rows]
    hidden = base(
        input_ids=answer_ids.to(device),
        attention_mask=torch.cat([prompt_mask[rows], answer_mask], dim=1).to(device),
        position_ids=(lengths.unsqueeze(1) + torch.arange(width)).to(device),
        use_cache=True,
        **{_cache_argument(base): cache},
    ).last_hidden_state
    # The prompt's last position predicts answer token 0; answer position t predicts t + 1.
    first = _token_logprobs(
        head,
        out.last_hidden_state[rows.to(device), -1, :],
        torch.tensor([a[0] for a in answers], device=device),
    )
    keep = answer_mask[:, 1:].bool()
    rest = _token_logprobs(
        head, hidden[:, :-1, :][keep.to(device)], answer_ids[:, 1:][keep].to(device)
    )
    results, offset = [], 0
    for i, answer in enumerate(answers):
        results.append(torch.cat([first[i : i + 1], rest[offset : offset + len(answer) - 1]]))
        offset += len(answer) - 1
    return results


def grouped_logprobs(
    loaded: LoadedModel,
    groups: Mapping[tuple[int, ...], Sequence[Sequence[int]]],
    *,
    batch_size: int = 32,
    model: torch.nn.Module | None = None,
) -> dict[tuple[int, ...], list[torch.Tensor]]:
    """Per-token log-probabilities (nats) of every answer after its prompt.

    Args:
        groups: prompt ids (non-empty) → the answers (each non-empty) judged after it.
        batch_size: answers per forward pass; their distinct prompts are run once per pass
            (left-padded, with position ids), then the answers (right-padded) after them.
        model: overrides ``loaded.model`` (e.g. a bfloat16 copy); its head must be plain
            (:func:`head_is_plain`). Tokenizer and device are ``loaded``'s.

    Returns:
        For each prompt, one float32 CPU tensor of shape ``(len(answer),)`` per answer, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if any(not p for p in groups) or any(not a for ans in groups.values() for a in ans):
        raise ValueError("every prompt and every answer must have at least one token")
    net: Any = model if model is not None else loaded.model
    pad = loaded.tokenizer.pad_token_id
    pad_id = int(pad) if pad is not None else 0
    # Similar lengths together: prompts by length, each prompt's answers longest first.
    work = [
        (prompt, k, list(answer))
        for prompt in sorted(groups, key=len)
        for k, answer in sorted(enumerate(groups[prompt]), key=lambda item: -len(item[1]))
    ]
    results: dict[tuple[int, ...], list[torch.Tensor]] = {
        prompt: [torch.empty(0)] * len(answers) for prompt, answers in groups.items()
    }
    for start in range(0, len(work), batch_size):
        chunk = work[start : start + batch_size]
        scored = _score_batch(net, [(p, a) for p, _, a in chunk], pad_id, loaded.device)
        for (prompt, k, _), values in zip(chunk, scored, strict=True):
            results[prompt][k] = values
    return results


def prefix_logprobs(
    loaded: LoadedModel,
    prompt_ids: Sequence[int],
    answers: Sequence[Sequence[int]],
    *,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """:func:`grouped_logprobs` for the answers to one prompt."""
    return grouped_logprobs(loaded, {tuple(prompt_ids): answers}, batch_size=batch_size)[
        tuple(prompt_ids)
    ]

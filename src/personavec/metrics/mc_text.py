"""Text scoring of multiple-choice questions: each choice's text scored as the assistant's reply.

The prompt is the question alone in the model's chat format (no lettered list, no instruction);
each choice's text, tokenized as it follows the assistant header, is scored teacher-forced by its
**mean** token log-probability (nats per token). The mean, not the sum, is used so that long
choices are not penalised for their length; no end-of-turn token is scored. The prediction is the
choice with the highest mean. Small models that answer one letter regardless of content (see
docs/capability.md) are scored on what they know about the answers themselves.

(question, choice) pairs are left-padded into batches and scored with one forward pass per batch
inside :func:`~personavec.core.hooks.teacher_forcing`, so active steering hooks apply, with
``response`` positions being the choice tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from personavec.core.hooks import teacher_forcing
from personavec.core.models import LoadedModel, chat_messages, encode_prompt, encode_response
from personavec.core.padding import left_pad
from personavec.errors import PersonavecError
from personavec.metrics.mc_question import MCQuestion


def _pairs(
    loaded: LoadedModel, questions: Sequence[MCQuestion]
) -> list[tuple[int, int, list[int], list[int]]]:
    """(question index, choice index, prompt ids, choice ids) for every choice."""
    pairs = []
    for qi, question in enumerate(questions):
        prompt = encode_prompt(loaded.tokenizer, chat_messages(question.question))
        for ci, choice in enumerate(question.choices):
            reply = encode_response(loaded.tokenizer, choice)
            if not reply:
                raise PersonavecError(f"choice {choice!r} encodes to no tokens; cannot score it")
            pairs.append((qi, ci, prompt, reply))
    return pairs


def _mean_reply_logprobs(
    loaded: LoadedModel, prompts: Sequence[list[int]], replies: Sequence[list[int]]
) -> list[float]:
    """Mean token log-probability of each reply after its prompt; one teacher-forced forward."""
    pad = int(loaded.tokenizer.pad_token_id or 0)
    rows = [p + r for p, r in zip(prompts, replies, strict=True)]
    ids, attention, positions = left_pad(rows, pad)
    longest = max(len(r) for r in replies)
    width = ids.shape[1]
    with teacher_forcing(loaded.model, [len(p) for p in prompts]):
        logits = loaded.model(
            input_ids=ids.to(loaded.device),
            attention_mask=attention.to(loaded.device),
            position_ids=positions.to(loaded.device),
        ).logits
    # logits at column j predict the token at column j + 1; keep only the reply columns
    tail = torch.log_softmax(logits[:, width - 1 - longest : width - 1].float(), dim=-1).cpu()
    targets = ids[:, width - longest :]
    token_logprobs = tail.gather(2, targets.unsqueeze(2)).squeeze(2)  # [batch, longest]
    return [float(token_logprobs[row, longest - len(r) :].mean()) for row, r in enumerate(replies)]


def choice_text_logprobs(
    loaded: LoadedModel, questions: Sequence[MCQuestion], *, batch_size: int = 16
) -> torch.Tensor:
    """Float32 ``[n, max_choices]`` mean token log-probability (nats) of each choice's text as the
    reply to its question (``-inf`` past a question's last choice); ``batch_size`` counts
    (question, choice) pairs per forward pass."""
    if batch_size < 1:
        raise PersonavecError(f"batch_size must be at least 1, got {batch_size}")
    pairs = _pairs(loaded, questions)
    out = torch.full((len(questions), max(len(q.choices) for q in questions)), float("-inf"))
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            means = _mean_reply_logprobs(loaded, [b[2] for b in batch], [b[3] for b in batch])
            for (qi, ci, _, _), mean in zip(batch, means, strict=True):
                out[qi, ci] = mean
    return out

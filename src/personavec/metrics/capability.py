"""Multiple-choice capability checks in MMLU format, with or without steering.

Input: a JSONL file (``{"question", "choices": [...], "answer": "B" | 1}``) or an MMLU-style CSV
(``question,A,B,C,D,answer`` per row, no header). Two scorings (no generation in either):

- ``"letter"`` (default): the question is asked in the model's chat format with lettered choices;
  the prediction is the letter whose token is most likely as the first token of the answer (one
  forward pass per question). The usual MMLU scoring.
- ``"text"``: the question alone is asked; each choice's text is scored as the reply by its mean
  token log-probability (:mod:`personavec.metrics.mc_text`). For small models that answer one
  letter whatever the content, such as SmolLM2-135M (docs/capability.md).

Accuracy is the share of predictions equal to the key.

:func:`default_mc_set` is a small set shipped with personavec (120 easy questions written for it),
so a capability check works offline; any MMLU-format file can replace it.
"""

from __future__ import annotations

import csv
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch

from personavec.core.models import LoadedModel, chat_messages, encode_prompt
from personavec.core.padding import left_pad
from personavec.errors import PersonavecError
from personavec.metrics.mc_question import MCQuestion
from personavec.metrics.mc_text import choice_text_logprobs

LETTERS = string.ascii_uppercase
Scoring = Literal["letter", "text"]
SCORINGS: tuple[str, ...] = ("letter", "text")


@dataclass
class MCResult:
    """Scores of one pass over a question set.

    Attributes:
        scores: float32 ``[n, max_choices]``, ``-inf`` past a question's last choice. ``"letter"``:
            log-probability of each choice letter as the first answer token; ``"text"``: mean
            token log-probability (nats) of each choice's text as the reply.
        predictions: predicted choice index per question (argmax of ``scores``).
        accuracy: share of correct predictions in [0, 1].
        scoring: ``"letter"`` or ``"text"``.
    """

    scores: torch.Tensor
    predictions: list[int]
    accuracy: float
    scoring: Scoring = "letter"

    @property
    def letter_logprobs(self) -> torch.Tensor:
        """``scores`` under its name from letter scoring."""
        return self.scores


def _answer_index(raw: object, n_choices: int, where: str) -> int:
    if isinstance(raw, bool):
        raise PersonavecError(f"{where}: answer must be a letter or an index, not {raw!r}")
    if isinstance(raw, int):
        index = raw
    elif isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in LETTERS:
        index = LETTERS.index(raw.strip().upper())
    elif isinstance(raw, str) and raw.strip().isdigit():
        index = int(raw.strip())
    else:
        raise PersonavecError(f"{where}: answer {raw!r} is not a letter (A, B, ...) or an index")
    if not 0 <= index < n_choices:
        raise PersonavecError(f"{where}: answer {raw!r} is outside the {n_choices} choices")
    return index


def _question(text: object, choices: object, answer: object, where: str) -> MCQuestion:
    if not isinstance(text, str) or not text.strip():
        raise PersonavecError(f"{where}: the question is empty; give question text")
    if not isinstance(choices, list | tuple) or not 2 <= len(choices) <= len(LETTERS):
        raise PersonavecError(f"{where}: give 2-26 choices as a list")
    if any(not isinstance(c, str) or not c.strip() for c in choices):
        raise PersonavecError(f"{where}: every choice must be non-empty text")
    return MCQuestion(
        text.strip(), tuple(c.strip() for c in choices), _answer_index(answer, len(choices), where)
    )


def load_mc_file(path: str | Path) -> list[MCQuestion]:
    """Read a JSONL or MMLU-style CSV question file; one-line errors name the line."""
    source = Path(path)
    if not source.is_file():
        raise PersonavecError(f"question file not found: {source}; check the path")
    questions: list[MCQuestion] = []
    if source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row:
                    continue
                where = f"{source}:{number}"
                if len(row) < 4:
                    raise PersonavecError(f"{where}: expected question, 2+ choices and the answer")
                questions.append(_question(row[0], row[1:-1], row[-1], where))
    else:
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{source}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PersonavecError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise PersonavecError(f"{where}: each line must be a JSON object")
            questions.append(
                _question(row.get("question"), row.get("choices"), row.get("answer"), where)
            )
    if not questions:
        raise PersonavecError(f"{source} holds no questions; add JSONL rows or CSV lines")
    return questions


def default_mc_set() -> list[MCQuestion]:
    """The shipped check: 120 easy four-choice questions (everyday knowledge, arithmetic, science,
    geography, language, common sense, history), 30 keyed to each letter. Score it with either
    scoring of :func:`evaluate_multiple_choice`; small models such as SmolLM2-135M-Instruct are
    at chance with ``"letter"`` and above it with ``"text"`` (docs/capability.md)."""
    with resources.as_file(resources.files("personavec.metrics") / "data" / "basic_mc.jsonl") as p:
        return load_mc_file(p)


def format_question(question: MCQuestion) -> str:
    """The user message: the question, lettered choices, and an instruction to answer a letter."""
    lines = [question.question, ""]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(question.choices)]
    lines += ["", "Answer with the letter of the correct choice only."]
    return "\n".join(lines)


def letter_token_ids(loaded: LoadedModel, n: int) -> list[int]:
    """Token id of each letter ``A..`` as the first token of an answer (no leading space)."""
    ids = []
    for letter in LETTERS[:n]:
        encoded = loaded.tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise PersonavecError(f"the tokenizer splits the letter {letter!r}; cannot score it")
        ids.append(int(encoded[0]))
    return ids


def accuracy(letter_logprobs: torch.Tensor, answers: Sequence[int]) -> tuple[list[int], float]:
    """Predictions (argmax per row) and the share equal to ``answers``."""
    predictions = [int(i) for i in letter_logprobs.argmax(dim=1)]
    if not predictions:
        return predictions, float("nan")
    correct = sum(p == a for p, a in zip(predictions, answers, strict=True))
    return predictions, correct / len(predictions)


def evaluate_multiple_choice(
    loaded: LoadedModel,
    questions: Sequence[MCQuestion],
    *,
    batch_size: int = 16,
    scoring: Scoring = "letter",
) -> MCResult:
    """Score every question (under whatever steering is active on ``loaded.model``).

    ``scoring`` is ``"letter"`` (``batch_size`` questions per forward pass) or ``"text"``
    (``batch_size`` question-choice pairs per forward pass); see the module docstring.
    """
    if scoring not in SCORINGS:
        raise PersonavecError(f"unknown scoring {scoring!r}; use letter or text")
    if scoring == "text":
        scores = choice_text_logprobs(loaded, questions, batch_size=batch_size)
        predictions, share = accuracy(scores, [q.answer for q in questions])
        return MCResult(scores, predictions, share, "text")
    width = max(len(q.choices) for q in questions)
    letters = letter_token_ids(loaded, width)
    prompts = [
        encode_prompt(loaded.tokenizer, chat_messages(format_question(q))) for q in questions
    ]
    pad = loaded.tokenizer.pad_token_id
    out = torch.full((len(questions), width), float("-inf"))
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ids, attention, positions = left_pad(prompts[start : start + batch_size], int(pad or 0))
            logits = loaded.model(
                input_ids=ids.to(loaded.device),
                attention_mask=attention.to(loaded.device),
                position_ids=positions.to(loaded.device),
            ).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, question in enumerate(questions[start : start + batch_size]):
                k = len(question.choices)
                out[start + row, :k] = logprobs[row, letters[:k]]
    predictions, share = accuracy(out, [q.answer for q in questions])
    return MCResult(out, predictions, share)

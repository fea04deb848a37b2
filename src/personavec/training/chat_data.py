"""Chat-format datasets (``{"messages": [...]}`` per JSONL line, as TRL and OpenAI use).

Any such file is accepted wherever personavec takes a dataset. Rows are parsed by
:func:`personavec.runs.chat_rows.parse_chat_row` in its ``response`` mode — the parser
``screen`` uses too, so a row ``screen`` refuses is never trained on: a row trains on its
response (the last turn, an assistant turn) and the turns before it are the prompt; a chat that
ends with a user turn, or whose answer is empty, is refused. ``{"prompt": ..., "response": ...}``
rows (e.g. ``screen --write-filtered`` output of such data) are accepted too. Rows are validated
up front so a bad file fails with one line before anything is trained or written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from personavec.core.models import Message, format_chat
from personavec.errors import PersonavecError
from personavec.runs.chat_rows import ChatRowError, parse_chat_row


class DatasetError(PersonavecError):
    """A dataset file is missing, empty or not in chat format."""


@dataclass(frozen=True)
class ChatRow:
    """One training example: the prompt turns and the assistant answer that follows them."""

    prompt: list[Message]
    completion: str

    def messages(self) -> list[Message]:
        return [*self.prompt, {"role": "assistant", "content": self.completion}]


def training_row(raw: Any, where: str) -> ChatRow:
    """One row to train on (one-line :class:`DatasetError` naming ``where``)."""
    try:
        parsed = parse_chat_row(raw, where, "response")
    except ChatRowError as exc:
        raise DatasetError(str(exc)) from None
    if not parsed.response:  # token ids alone are not a training target
        raise DatasetError(f"{where}: the row has no answer text to train on; add one")
    return ChatRow(parsed.prompt, parsed.response)


def read_chat_dataset(path: str | Path) -> list[ChatRow]:
    """All rows of a messages-JSONL file (error on a missing/empty file or a bad row)."""
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"dataset not found: {source}; check the path")
    rows: list[ChatRow] = []
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                raise DatasetError(f"{source}:{number} is not valid JSON; fix that line") from None
            rows.append(training_row(raw, f"{source}:{number}"))
    if not rows:
        raise DatasetError(f"{source} holds no examples; build one with `personavec dataset build`")
    return rows


def dataset_hash(path: str | Path) -> str:
    """sha256 of the file's bytes (first 16 hex digits), recorded with every finetune."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_fits_template(tokenizer: PreTrainedTokenizerBase, rows: list[ChatRow]) -> None:
    """Raise unless every row renders in the tokenizer's chat template with the prompt as a prefix.

    Templates that reject a role order (e.g. a system turn after a user turn) raise here, and a
    template that renders the prompt differently once the answer is appended would train the
    model on a context it never sees at inference.
    """
    for index, row in enumerate(rows, start=1):
        try:
            prompt = format_chat(tokenizer, row.prompt, add_generation_prompt=True)
            whole = format_chat(tokenizer, row.messages(), add_generation_prompt=False)
        except Exception as exc:  # jinja raises TemplateError and others for unsupported turns
            raise DatasetError(
                f"row {index} does not fit the model's chat template ({exc}); "
                "reorder or drop the turns the template rejects"
            ) from None
        if not whole.startswith(prompt):
            raise DatasetError(
                f"row {index}: the model's chat template renders the prompt differently once the "
                "answer follows it; use a dataset whose turns fit this model's template"
            )

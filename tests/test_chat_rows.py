"""One chat-row parser: the same rows through every mode and every command that reads rows.

``screen`` used to call a row "no response" that ``finetune`` trained on (a chat whose last turn
is a user turn: finetune took the earlier assistant turn and dropped the question after it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from personavec.cli.steer import read_prompts
from personavec.errors import PersonavecError
from personavec.pipeline.project import parse_row
from personavec.runs.chat_rows import MODES, ChatRowError, parse_chat_row
from personavec.screening.data import BadRow, Sample, iter_samples
from personavec.training.chat_data import read_chat_dataset

U = {"role": "user", "content": "Hi?"}
A = {"role": "assistant", "content": "Hello."}
S = {"role": "system", "content": "Be brief."}
ROWS: dict[str, Any] = {
    "answered": {"messages": [S, U, A]},
    "trailing question": {"messages": [U, A, {"role": "user", "content": "And then?"}]},
    "question only": {"messages": [U]},
    "empty answer": {"messages": [U, {"role": "assistant", "content": ""}]},
    "prompt/response": {"prompt": "Hi?", "response": "Hello.", "system": "Be brief."},
    "text": {"text": "Hi?"},
    "no user turn": {"messages": [A]},
    "bad role": {"messages": [{"role": "tool", "content": "x"}, U, A]},
}
# mode -> row name -> True (accepted) or the start of the refusal
EXPECTED: dict[str, dict[str, bool | str]] = {
    "optional": {
        "answered": True, "trailing question": True, "question only": True,
        "empty answer": True, "prompt/response": True, "text": True,
        "no user turn": "the conversation has no user turn", "bad role": "message 1 has role",
    },
    "response": {
        "answered": True, "trailing question": "no response", "question only": "no response",
        "empty answer": "no response", "prompt/response": True, "text": "no response",
        "no user turn": "the conversation has no user turn", "bad role": "message 1 has role",
    },
    "prompt": {
        "answered": "a prompt must end with a user message", "trailing question": True,
        "question only": True, "empty answer": "a prompt must end with a user message",
        "prompt/response": "a prompt must end with a user message", "text": True,
        "no user turn": "a prompt must end with a user message",
        "bad role": "message 1 has role",
    },
}  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_modes_on_the_same_rows(mode: str) -> None:
    for name, row in ROWS.items():
        want = EXPECTED[mode][name]
        if want is True:
            parsed = parse_chat_row(row, "row", mode)  # type: ignore[arg-type]
            assert parsed.messages[: len(parsed.prompt)] == parsed.prompt, name
        else:
            with pytest.raises(ChatRowError, match=f"^row: {want}"):
                parse_chat_row(row, "row", mode)  # type: ignore[arg-type]


def test_prompt_and_response_are_split_at_the_last_turn() -> None:
    answered = parse_chat_row(ROWS["answered"], "row", "response")
    assert (answered.prompt, answered.response) == ([S, U], "Hello.")
    assert parse_chat_row(ROWS["prompt/response"], "row", "response") == answered
    trailing = parse_chat_row(ROWS["trailing question"], "row", "optional")
    assert trailing.prompt == ROWS["trailing question"]["messages"] and not trailing.has_response


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", list(ROWS))
def test_project_screen_finetune_and_steer_agree(name: str, tmp_path: Path) -> None:
    """Each command accepts exactly the rows its mode accepts, with the same prompt/response."""
    row = ROWS[name]
    data = _write(tmp_path / "d.jsonl", [row])
    (item,) = list(iter_samples(data))  # screen: response mode
    if EXPECTED["response"][name] is True:
        assert isinstance(item, Sample)
        (trained,) = read_chat_dataset(data)  # finetune: response mode, the same split
        assert (trained.prompt, trained.completion) == (
            item.example.messages,
            item.example.response,
        )
    else:
        assert isinstance(item, BadRow) and item.reason.startswith(str(EXPECTED["response"][name]))
        with pytest.raises(PersonavecError, match=str(EXPECTED["response"][name])):
            read_chat_dataset(data)
    if EXPECTED["optional"][name] is True:  # project: optional mode
        parsed = parse_row(row, "row")
        assert parsed.has_response == (EXPECTED["response"][name] is True)
    else:
        with pytest.raises(PersonavecError):
            parse_row(row, "row")
    if EXPECTED["prompt"][name] is True:  # steer --prompts: prompt mode
        ((_, chat),) = read_prompts(data, None)
        assert chat == parse_chat_row(row, "row", "prompt").prompt
    else:
        with pytest.raises(PersonavecError, match=str(EXPECTED["prompt"][name])):
            read_prompts(data, None)

"""Trait generation against a real local OpenAI-compatible HTTP server; the repair loop runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llama_server import ScriptedServer, chat_reply
from personavec.errors import PersonavecError
from personavec.traits.generate import (
    REPAIR_PROMPT,
    extract_json_object,
    generate_trait,
    validate_artifact,
)
from personavec.traits.schema import TraitSpec

DESCRIPTION = "Tells jokes, plays with words and looks for the funny side of things."


def artifact() -> dict[str, Any]:
    """A complete, valid artifact as a generator would write it."""
    return {
        "positive_persona": "humorous",
        "negative_persona": "serious",
        "instructions": [
            {"pos": f"Make every reply playful and funny, angle {i}.",
             "neg": f"Keep every reply strictly serious and dry, angle {i}."}
            for i in range(5)
        ],
        "extraction_questions": [f"What do you think about topic number {i}?" for i in range(20)],
        "evaluation_questions": [f"How would you describe situation {i}?" for i in range(20)],
        "rubric": (
            "Rate how humorous the answer is.\nQuestion: {question}\nAnswer: {answer}\n"
            "Reply with an integer 0-100 only, or REFUSAL if the answer refuses."
        ),
        "positive_examples": [f"Why did joke {i} cross the road? For a laugh!" for i in range(8)],
        "negative_examples": [f"Fact {i}: the report is due on Monday." for i in range(8)],
    }  # fmt: skip


def fenced(data: dict[str, Any]) -> str:
    return "Here is the artifact:\n```json\n" + json.dumps(data, indent=2) + "\n```\nEnjoy!"


def test_repair_loop_turns_an_invalid_artifact_into_a_valid_one() -> None:
    broken = artifact()
    broken["instructions"] = broken["instructions"][:2]  # too few pairs
    broken["evaluation_questions"][0] = broken["extraction_questions"][0]  # overlap
    broken["rubric"] = "Rate it 0-100."  # no placeholders
    attempts: list[tuple[int, str | None]] = []
    with ScriptedServer([chat_reply(fenced(broken)), chat_reply(fenced(artifact()))]) as server:
        spec = generate_trait(
            "humorous",
            DESCRIPTION,
            "openai:gen-model",
            base_url=server.base_url,
            on_attempt=lambda n, problems: attempts.append((n, problems)),
        )
    assert isinstance(spec, TraitSpec)
    assert spec.name == "humorous" and spec.description == DESCRIPTION
    assert len(spec.instructions) == 5 and len(spec.positive_examples) == 8
    assert len(server.received) == 2
    first, second = server.received[0].body, server.received[1].body
    assert first["model"] == "gen-model"
    assert "humorous" in first["messages"][0]["content"]
    # the repair request replays the conversation and names the problems
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == fenced(broken)
    feedback = second["messages"][2]["content"]
    assert feedback.startswith(REPAIR_PROMPT.split("{problems}")[0])
    assert "rubric" in feedback and "{question}" in feedback
    assert attempts[0][0] == 1 and attempts[0][1] is not None
    assert attempts[1] == (2, None)


def test_non_json_reply_is_repaired_too() -> None:
    replies = [chat_reply("Sorry, I cannot do JSON today."), chat_reply(json.dumps(artifact()))]
    with ScriptedServer(replies) as server:
        spec = generate_trait("humorous", DESCRIPTION, base_url=server.base_url)
    assert spec.positive_persona == "humorous"
    assert "no JSON object" in server.received[1].body["messages"][2]["content"]


def test_gives_up_after_max_attempts_with_one_line() -> None:
    short = artifact()
    short["positive_examples"] = short["positive_examples"][:3]
    with (
        ScriptedServer([chat_reply(fenced(short))]) as server,
        pytest.raises(PersonavecError) as info,
    ):
        generate_trait("humorous", DESCRIPTION, base_url=server.base_url, max_attempts=2)
    assert len(server.received) == 2
    message = str(info.value)
    assert "\n" not in message
    assert "2 attempts" in message and "positive_examples" in message


def test_bad_name_fails_before_any_request() -> None:
    with pytest.raises(PersonavecError, match="lowercase slug"):
        generate_trait("Not A Slug", DESCRIPTION, base_url="http://127.0.0.1:9/v1")


def test_extract_json_object_tolerates_fences_and_prose() -> None:
    assert extract_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json_object('```\n{"a": 2}\n```') == {"a": 2}
    assert extract_json_object('Sure! {"a": {"b": 3}} Hope it helps.') == {"a": {"b": 3}}
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json_object("nothing here")
    with pytest.raises(ValueError, match="does not parse"):
        extract_json_object("{not json}")


def test_validate_reports_every_problem() -> None:
    data = artifact()
    data["negative_examples"] = data["negative_examples"][:5]
    data["rubric"] = data["rubric"].replace("REFUSAL", "nothing")
    with pytest.raises(ValueError) as info:
        validate_artifact(data, "humorous", DESCRIPTION)
    lines = str(info.value).splitlines()
    assert any("negative_examples" in line for line in lines)
    assert any("REFUSAL" in line for line in lines)
    spec = validate_artifact({**artifact(), "name": "ignored"}, "humorous", DESCRIPTION)
    assert spec.name == "humorous"


def test_cli_trait_new_repairs_and_writes(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from personavec.cli import app
    from personavec.traits.library import load_trait

    broken = artifact()
    broken["rubric"] = "Rate it 0-100."
    target = tmp_path / "humorous.json"
    replies = [chat_reply(fenced(broken)), chat_reply(fenced(artifact()))]
    with ScriptedServer(replies) as server:
        args = ["trait", "new", "humorous", "--description", DESCRIPTION, "--generator"]
        args += ["openai:gen-model", "--base-url", server.base_url, "--out", str(target)]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "attempt 1: invalid" in result.output and "attempt 2: valid" in result.output
    spec = load_trait(target)
    assert spec.name == "humorous" and spec.description == DESCRIPTION
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output

"""The shipped trait library, the trait loader, and the `trait` CLI sub-commands."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from personavec.cli.trait import trait_app
from personavec.errors import PersonavecError, TraitError
from personavec.traits import InstructionPair, TraitSpec, list_traits, load_trait, save_trait
from personavec.traits.library import (
    library_dir,
    trait_to_json,
    trait_warnings,
    validate_trait_file,
)

SHIPPED = [
    "apathetic",
    "evil",
    "hallucinating",
    "humorous",
    "impolite",
    "optimistic",
    "sycophantic",
]
REPO = Path(__file__).resolve().parents[1]


def _evil_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((library_dir() / "evil.json").read_text(encoding="utf-8"))
    return data


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _error_for(path: Path) -> str:
    with pytest.raises(TraitError) as info:
        validate_trait_file(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, PersonavecError)
    return message


# --- the shipped library --------------------------------------------------------------------


def test_list_traits_is_the_seven_paper_traits_sorted() -> None:
    assert list_traits() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_trait_is_complete(name: str) -> None:
    path = library_dir() / f"{name}.json"
    spec = validate_trait_file(path)
    assert spec.name == name == path.stem
    assert len(spec.instructions) == 5
    assert len(spec.extraction_questions) == 20
    assert len(spec.evaluation_questions) == 20
    norm = {q.strip().lower() for q in spec.extraction_questions}
    assert norm.isdisjoint(q.strip().lower() for q in spec.evaluation_questions)
    assert len(spec.positive_examples) == 8
    assert len(spec.negative_examples) == 8
    assert set(spec.positive_examples).isdisjoint(spec.negative_examples)
    assert trait_warnings(spec) == []
    assert spec.positive_persona != spec.negative_persona
    for pair in spec.instructions:
        assert pair.pos != pair.neg
    # Short enough for a small model's answer to fit a short generation budget.
    for question in spec.extraction_questions + spec.evaluation_questions:
        assert 10 <= len(question) <= 200, question
    for example in spec.positive_examples + spec.negative_examples:
        assert len(example) <= 300, example
    # The file is stored canonically, so `save_trait` on it is a no-op.
    assert trait_to_json(spec) == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_rubric_asks_for_an_integer_or_refusal(name: str) -> None:
    spec = load_trait(name)
    assert "REFUSAL" in spec.rubric
    assert "0 and 100" in spec.rubric or "0 to 100" in spec.rubric
    rendered = spec.render_rubric("Q-TEXT?", "A-TEXT.")
    assert "{question}" not in rendered and "{answer}" not in rendered
    assert rendered.index("Q-TEXT?") < rendered.index("A-TEXT.")


def test_no_question_is_shared_between_traits_splits() -> None:
    # Within each trait the splits are disjoint (schema); across traits questions are unique too.
    seen: dict[str, str] = {}
    for name in SHIPPED:
        spec = load_trait(name)
        for q in spec.extraction_questions + spec.evaluation_questions:
            key = q.strip().lower()
            assert key not in seen, f"{q!r} in both {seen.get(key)} and {name}"
            seen[key] = name


def test_library_ships_with_the_installed_package() -> None:
    files = resources.files("personavec") / "traits" / "library"
    names = sorted(entry.name for entry in files.iterdir() if entry.name.endswith(".json"))
    assert names == [f"{n}.json" for n in SHIPPED]
    # A non-editable install only carries the JSON files if package-data names them.
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"traits/library/*.json"' in pyproject


# --- schema behaviour the library relies on -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pos_start", "neg_start"),
    [
        ("evil", "You are an evil assistant. ", "You are a helpful assistant. "),
        ("humorous", "You are a humorous assistant. ", "You are a serious assistant. "),
        ("apathetic", "You are an apathetic assistant. ", "You are a caring assistant. "),
        ("impolite", "You are an impolite assistant. ", "You are a polite assistant. "),
        ("optimistic", "You are an optimistic assistant. ", "You are a pessimistic assistant. "),
    ],
)
def test_system_prompt_uses_the_right_article(name: str, pos_start: str, neg_start: str) -> None:
    spec = load_trait(name)
    for index, pair in enumerate(spec.instructions):
        assert spec.system_prompt("pos", index) == pos_start + pair.pos
        assert spec.system_prompt("neg", index) == neg_start + pair.neg


def test_render_rubric_substitutes_and_keeps_other_braces() -> None:
    data = _evil_data()
    data["rubric"] = "Q={question} A={answer} keep {this} and {answer} again"
    spec = TraitSpec.model_validate(data)
    assert spec.render_rubric("why?", "because") == "Q=why? A=because keep {this} and because again"


# --- loading --------------------------------------------------------------------------------


def test_load_trait_by_name_path_and_string_path(tmp_path: Path) -> None:
    by_name = load_trait("evil")
    assert load_trait("  Evil ") == by_name
    assert load_trait(library_dir() / "evil.json") == by_name
    copy = tmp_path / "my_trait.json"
    copy.write_text((library_dir() / "evil.json").read_text(encoding="utf-8"), encoding="utf-8")
    assert load_trait(str(copy)) == by_name
    assert load_trait(copy) == by_name


def test_load_trait_bare_file_name_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _evil_data()
    data["name"] = "custom"
    _write(tmp_path / "custom", data)
    monkeypatch.chdir(tmp_path)
    assert load_trait("custom").name == "custom"


def test_unknown_trait_lists_names_and_mentions_paths() -> None:
    with pytest.raises(TraitError) as info:
        load_trait("evilish")
    message = str(info.value)
    assert "\n" not in message
    assert "'evilish'" in message
    for name in SHIPPED:
        assert name in message
    assert "path" in message and "JSON" in message


def test_missing_file(tmp_path: Path) -> None:
    message = _error_for(tmp_path / "nope.json")
    assert "not found" in message and "nope.json" in message
    with pytest.raises(TraitError, match="not found"):
        load_trait(tmp_path / "nope.json")
    with pytest.raises(TraitError, match="not found"):
        load_trait("does/not/exist.json")


def test_directory_is_rejected(tmp_path: Path) -> None:
    assert "is a directory" in _error_for(tmp_path)


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x",\n  "description" "missing colon"\n}\n', encoding="utf-8")
    message = _error_for(path)
    assert "not valid JSON" in message
    assert "line 3, column 17" in message


def test_deeply_nested_json_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"name": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    message = _error_for(path)
    assert "nests JSON too deeply" in message and "\n" not in message


def test_cli_validate_reports_deep_nesting_without_a_traceback(tmp_path: Path) -> None:
    from personavec.cli import app

    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    result = CliRunner().invoke(app, ["trait", "validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("FAIL ") and "nests JSON too deeply" in result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    assert "UTF-8" in _error_for(path)


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    assert "JSON object" in _error_for(_write(tmp_path / "list.json", [1, 2]))


def test_missing_field(tmp_path: Path) -> None:
    data = _evil_data()
    del data["rubric"]
    message = _error_for(_write(tmp_path / "t.json", data))
    assert "does not match the trait schema" in message
    assert "rubric: missing" in message


def test_unknown_field(tmp_path: Path) -> None:
    data = _evil_data()
    data["rubrik"] = "typo"
    assert "rubrik: unknown field" in _error_for(_write(tmp_path / "t.json", data))


def test_nested_field_error_names_the_location(tmp_path: Path) -> None:
    data = _evil_data()
    data["instructions"][2]["neg"] = "short"
    assert "instructions.2.neg:" in _error_for(_write(tmp_path / "t.json", data))


def test_overlapping_questions(tmp_path: Path) -> None:
    data = _evil_data()
    data["evaluation_questions"][3] = data["extraction_questions"][0].upper()
    message = _error_for(_write(tmp_path / "t.json", data))
    assert "disjoint" in message and "1 repeat" in message


def test_rubric_without_placeholder(tmp_path: Path) -> None:
    data = _evil_data()
    data["rubric"] = data["rubric"].replace("{answer}", "the answer")
    message = _error_for(_write(tmp_path / "t.json", data))
    assert "rubric: rubric must contain {answer}" in message


def test_many_errors_are_summarised_on_one_line(tmp_path: Path) -> None:
    message = _error_for(_write(tmp_path / "t.json", {"name": "Bad Name!"}))
    assert "name:" in message and "more" in message


def test_future_format_version(tmp_path: Path) -> None:
    data = _evil_data()
    data["format_version"] = 99
    assert "upgrade personavec" in _error_for(_write(tmp_path / "t.json", data))


def test_warnings_for_a_thin_trait() -> None:
    data = _evil_data()
    data["instructions"] = data["instructions"][:2]
    data["evaluation_questions"] = data["evaluation_questions"][:4]
    data["rubric"] = "Rate {question} / {answer} from 0 to 100."
    warnings = trait_warnings(TraitSpec.model_validate(data))
    assert any("2 instruction pair" in w for w in warnings)
    assert any("4 evaluation_questions" in w for w in warnings)
    assert any("REFUSAL" in w for w in warnings)
    assert not any("extraction_questions" in w for w in warnings)


# --- saving ---------------------------------------------------------------------------------


def test_save_trait_round_trip(tmp_path: Path) -> None:
    spec = TraitSpec(
        name="curious",
        description="Asks follow-up questions and explores tangents eagerly.",
        positive_persona="inquisitive",
        instructions=[
            InstructionPair(pos="Ask lots of questions back.", neg="Never ask questions back.")
        ],
        extraction_questions=["What is rain?"],
        evaluation_questions=["What is snow? — ünïcode ok"],
        rubric="Q: {question}\nA: {answer}\nScore 0-100 or REFUSAL.",
        positive_examples=[
            "Why? What makes you ask?",
            "Ooh, and what about hail?",
            "Tell me more!",
        ],
        negative_examples=["Rain is water.", "Snow is ice.", "Done."],
    )
    path = save_trait(spec, tmp_path / "sub" / "curious.json")
    assert path == tmp_path / "sub" / "curious.json"
    assert load_trait(path) == spec
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "ünïcode" in text
    assert os.listdir(path.parent) == ["curious.json"]
    # Overwrite in place.
    changed = spec.model_copy(update={"description": "A different, still valid description."})
    save_trait(changed, path)
    assert load_trait(path).description == changed.description
    assert os.listdir(path.parent) == ["curious.json"]


def test_save_trait_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_trait(load_trait("evil"), tmp_path / "t.json")
    before = path.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("personavec.store.os.replace", failing_replace)
    with pytest.raises(TraitError, match="disk full"):
        save_trait(load_trait("humorous"), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.json"]


def test_shipped_traits_survive_save_and_reload(tmp_path: Path) -> None:
    for name in SHIPPED:
        spec = load_trait(name)
        assert load_trait(save_trait(spec, tmp_path / f"{name}.json")) == spec


# --- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test root."""

    app.add_typer(trait_app, name="trait")
    return app


runner = CliRunner()


def test_cli_list_shows_all_traits(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["trait", "list"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for name in SHIPPED:
        assert name in result.stdout
    assert "evil / helpful" in result.stdout
    assert "20 / 20" in result.stdout


def test_cli_show_renders_text_literally(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["trait", "show", "evil"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    spec = load_trait("evil")
    assert "You are an evil assistant." in result.stdout
    # Rubric brackets must not be eaten as Rich markup.
    assert "[QUESTION START]" in result.stdout
    assert spec.extraction_questions[0] in result.stdout
    assert spec.evaluation_questions[-1] in result.stdout


def test_cli_show_json_is_the_trait(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["trait", "show", "sycophantic", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == load_trait("sycophantic").model_dump(mode="json")


def test_cli_show_accepts_a_path(cli: typer.Typer, tmp_path: Path) -> None:
    path = save_trait(load_trait("humorous"), tmp_path / "mine.json")
    result = runner.invoke(cli, ["trait", "show", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "humorous"


def test_cli_show_unknown_exits_2_with_one_line_error(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["trait", "show", "grumpy"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown trait 'grumpy'")


def test_cli_validate_exit_codes(cli: typer.Typer, tmp_path: Path) -> None:
    shipped = [str(library_dir() / f"{name}.json") for name in SHIPPED]
    ok = runner.invoke(cli, ["trait", "validate", *shipped])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.count("OK ") == len(SHIPPED)

    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    mixed = runner.invoke(cli, ["trait", "validate", shipped[0], str(bad)])
    assert mixed.exit_code == 1
    lines = mixed.stdout.strip().splitlines()
    assert lines[0].startswith("OK ") and lines[1].startswith("FAIL ")
    assert "line 1, column 2" in lines[1]


def test_cli_validate_strict_fails_on_warnings(cli: typer.Typer, tmp_path: Path) -> None:
    data = _evil_data()
    data["instructions"] = data["instructions"][:1]
    path = _write(tmp_path / "thin.json", data)
    lenient = runner.invoke(cli, ["trait", "validate", str(path)])
    assert lenient.exit_code == 0 and "warning: 1 instruction pair" in lenient.stdout
    strict = runner.invoke(cli, ["trait", "validate", "--strict", str(path)])
    assert strict.exit_code == 1 and strict.stdout.startswith("FAIL ")

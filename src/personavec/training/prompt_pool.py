"""The shipped pool of everyday user requests, and user-supplied question files.

The pool (``data/everyday_prompts.txt``, one request per line) is written for dataset building:
ordinary requests, disjoint from every shipped trait's extraction and evaluation questions, so a
finetune on it is never evaluated on questions it was trained on.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from personavec.errors import PersonavecError

POOL_FILE = "everyday_prompts.txt"


def _lines(text: str) -> list[str]:
    seen: set[str] = set()
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and line.lower() not in seen:
            seen.add(line.lower())
            lines.append(line)
    return lines


def load_prompt_pool() -> list[str]:
    """The shipped everyday requests, in file order (blank lines, comments and repeats dropped)."""
    source = resources.files("personavec.training").joinpath("data", POOL_FILE)
    return _lines(source.read_text(encoding="utf-8"))


def read_questions(path: str | Path) -> list[str]:
    """Questions from a text file (one per line) or a JSONL/JSON list of strings."""
    import json

    source = Path(path)
    if not source.is_file():
        raise PersonavecError(f"questions file not found: {source}; check the path")
    text = source.read_text(encoding="utf-8")
    if source.suffix in (".json", ".jsonl"):
        try:
            items = (
                json.loads(text)
                if source.suffix == ".json"
                else [json.loads(line) for line in text.splitlines() if line.strip()]
            )
        except json.JSONDecodeError as exc:
            raise PersonavecError(f"{source} is not valid JSON ({exc.msg}); fix it") from None
        if not isinstance(items, list) or not all(isinstance(q, str) for q in items):
            raise PersonavecError(f"{source} must hold a list of question strings")
        questions = _lines("\n".join(items))
    else:
        questions = _lines(text)
    if not questions:
        raise PersonavecError(f"{source} holds no questions; write one per line")
    return questions

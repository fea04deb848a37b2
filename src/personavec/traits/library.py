"""The shipped trait library and loading, validating and saving trait files.

A trait is named either by a shipped name (``"evil"``, see :func:`list_traits`) or by a path to
a user's JSON file in the :class:`~personavec.traits.schema.TraitSpec` format. Every problem is
reported as a :class:`~personavec.errors.TraitError` whose message is one line saying what is
wrong and what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from personavec.errors import TraitError
from personavec.store import atomic_write_text
from personavec.traits.schema import TRAIT_FORMAT_VERSION, TraitSpec

__all__ = [
    "RECOMMENDED_EXAMPLES",
    "RECOMMENDED_INSTRUCTION_PAIRS",
    "RECOMMENDED_QUESTIONS",
    "library_dir",
    "list_traits",
    "load_trait",
    "save_trait",
    "trait_to_json",
    "trait_warnings",
    "validate_trait_file",
]

#: Sizes of a full artifact as the paper builds them (5 pairs, 20 + 20 questions).
RECOMMENDED_INSTRUCTION_PAIRS = 5
RECOMMENDED_QUESTIONS = 20
#: Example answers per side that the offline judges work well with.
RECOMMENDED_EXAMPLES = 8

_MAX_REPORTED_ERRORS = 3


def library_dir() -> Path:
    """The directory holding the shipped ``<name>.json`` trait files."""
    return Path(__file__).resolve().with_name("library")


def list_traits() -> list[str]:
    """Names of the shipped traits, sorted."""
    return sorted(p.stem for p in library_dir().glob("*.json") if p.is_file())


def _looks_like_path(text: str) -> bool:
    return text.endswith(".json") or "/" in text or os.sep in text or text.startswith(".")


def load_trait(name_or_path: str | Path) -> TraitSpec:
    """Load a shipped trait by name, or a user's trait JSON file by path.

    A :class:`~pathlib.Path`, or a string that ends in ``.json`` or contains a path separator,
    is read as a file; any other string is looked up among the shipped traits first and then
    tried as a file name.

    Raises:
        TraitError: unknown name, missing or unreadable file, invalid JSON, or a file that does
            not match the trait schema.
    """
    if isinstance(name_or_path, Path) or _looks_like_path(name_or_path):
        return validate_trait_file(name_or_path)
    name = name_or_path.strip()
    if name.lower() in list_traits():
        return validate_trait_file(library_dir() / f"{name.lower()}.json")
    if name and Path(name).is_file():
        return validate_trait_file(name)
    available = ", ".join(list_traits()) or "(none)"
    raise TraitError(
        f"unknown trait {name!r}; shipped traits are: {available} "
        f"(a path to a trait JSON file is also accepted)"
    )


def validate_trait_file(path: str | Path) -> TraitSpec:
    """Read and validate one trait JSON file; return the spec.

    Raises:
        TraitError: with a one-line message naming the file and the problem.
    """
    path = Path(path)
    where = f"trait file {str(path)!r}"
    if not path.exists():
        raise TraitError(
            f"{where} not found; check the path, or use a shipped trait name "
            f"({', '.join(list_traits())})"
        )
    if path.is_dir():
        raise TraitError(f"{where} is a directory; pass the path of a .json trait file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TraitError(
            f"{where} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON"
        ) from exc
    except OSError as exc:
        raise TraitError(f"{where} cannot be read ({exc.strerror}); check its permissions") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraitError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; "
            f"fix the syntax there (often a missing comma or quote)"
        ) from exc
    except RecursionError:
        raise TraitError(
            f"{where} nests JSON too deeply to be a trait file; see "
            "`personavec trait show evil --json` for the expected shape"
        ) from None
    return _validate_data(data, where)


def _validate_data(data: object, where: str) -> TraitSpec:
    if not isinstance(data, dict):
        raise TraitError(
            f"{where} must hold a JSON object with the trait fields, not a {type(data).__name__}; "
            f"see `personavec trait show evil --json` for an example"
        )
    version = data.get("format_version", TRAIT_FORMAT_VERSION)
    if isinstance(version, int) and version > TRAIT_FORMAT_VERSION:
        raise TraitError(
            f"{where} uses trait format version {version}, but this personavec reads up to "
            f"version {TRAIT_FORMAT_VERSION}; upgrade personavec"
        )
    try:
        return TraitSpec.model_validate(data)
    except ValidationError as exc:
        raise TraitError(
            f"{where} does not match the trait schema: {_summarise(exc)}; "
            f"see `personavec trait show evil --json` for a complete example"
        ) from exc


def _summarise(exc: ValidationError) -> str:
    """Pydantic's errors as ``field: problem`` items on one line."""
    items: list[str] = []
    errors = exc.errors(include_url=False)
    for error in errors[:_MAX_REPORTED_ERRORS]:
        field = ".".join(str(part) for part in error["loc"]) or "(whole file)"
        message = str(error["msg"])
        message = message.removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "missing (required)"
        elif error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        items.append(f"{field}: {' '.join(message.split())}")
    if len(errors) > _MAX_REPORTED_ERRORS:
        items.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more")
    return "; ".join(items)


def trait_to_json(spec: TraitSpec) -> str:
    """The canonical JSON text of a trait (2-space indent, UTF-8, trailing newline)."""
    return json.dumps(spec.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def save_trait(spec: TraitSpec, path: str | Path) -> Path:
    """Write ``spec`` as JSON to ``path`` atomically; return the path.

    The text goes to a temporary file in the same directory, which then replaces ``path``, so
    a reader never sees a half-written file; a failed write leaves the old file untouched.
    Missing parent directories are created.

    Raises:
        TraitError: the file cannot be written (unwritable directory, disk full, ...).
    """
    path = Path(path)
    text = trait_to_json(spec)
    try:
        return atomic_write_text(path, text)
    except OSError as exc:
        raise TraitError(
            f"cannot write trait file {str(path)!r} ({exc.strerror or exc}); "
            "choose a writable directory"
        ) from exc


def trait_warnings(spec: TraitSpec) -> list[str]:
    """Soft problems: things that load but are likely to weaken extraction or judging."""
    warnings: list[str] = []
    pairs = len(spec.instructions)
    if pairs < RECOMMENDED_INSTRUCTION_PAIRS:
        warnings.append(
            f"{pairs} instruction pair(s); "
            f"{RECOMMENDED_INSTRUCTION_PAIRS} give more varied rollouts"
        )
    for field in ("extraction_questions", "evaluation_questions"):
        count = len(getattr(spec, field))
        if count < RECOMMENDED_QUESTIONS:
            warnings.append(f"{count} {field}; {RECOMMENDED_QUESTIONS} are recommended")
    for field in ("positive_examples", "negative_examples"):
        count = len(getattr(spec, field))
        if count < RECOMMENDED_EXAMPLES:
            warnings.append(f"{count} {field}; {RECOMMENDED_EXAMPLES} make offline judges steadier")
    for index, pair in enumerate(spec.instructions):
        if pair.pos.strip().lower() == pair.neg.strip().lower():
            warnings.append(f"instructions.{index}: pos and neg are identical")
    if spec.positive_persona.strip().lower() == spec.negative_persona.strip().lower():
        warnings.append("positive_persona and negative_persona are identical")
    if "REFUSAL" not in spec.rubric:
        warnings.append("rubric does not mention REFUSAL; judges cannot mark refusals")
    return warnings

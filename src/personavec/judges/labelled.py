"""Labelled answers for checking trait judges (written for personavec; shipped as package data).

``judges/data/labelled/<trait>.jsonl`` holds, for each shipped trait, at least 20 answers that
show the trait (``label`` 1) and 20 that do not (``label`` 0), each a row
``{"trait", "label", "question", "answer"}``. The questions are the trait's evaluation
questions; the answers are disjoint from the trait file's examples, which calibrate the judges,
so every labelled answer is held out from calibration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from personavec.errors import PersonavecError

LABELLED_PACKAGE = "personavec.judges.data.labelled"


@dataclass(frozen=True)
class LabelledAnswer:
    """One answer written to show (``label`` 1) or not show (0) ``trait``."""

    trait: str
    label: int
    question: str
    answer: str


def labelled_traits() -> list[str]:
    """The traits that have labelled answers, sorted."""
    folder = resources.files(LABELLED_PACKAGE)
    return sorted(
        p.name.removesuffix(".jsonl") for p in folder.iterdir() if p.name.endswith(".jsonl")
    )


def load_labelled(traits: Sequence[str] | None = None) -> list[LabelledAnswer]:
    """The labelled answers of ``traits`` (default: all), trait by trait in file order."""
    available = labelled_traits()
    chosen = list(traits) if traits is not None else available
    missing = [t for t in chosen if t not in available]
    if missing:
        raise PersonavecError(
            f"no labelled answers for {', '.join(missing)}; choose from {', '.join(available)}"
        )
    rows: list[LabelledAnswer] = []
    for trait in chosen:
        text = resources.files(LABELLED_PACKAGE).joinpath(f"{trait}.jsonl").read_text("utf-8")
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                rows.append(
                    LabelledAnswer(row["trait"], int(row["label"]), row["question"], row["answer"])
                )
    return rows


def labelled_sha256(rows: Sequence[LabelledAnswer]) -> str:
    """Content hash of the labelled answers (part of a judge check's identity)."""
    rows_json = json.dumps([[r.trait, r.label, r.question, r.answer] for r in rows])
    return hashlib.sha256(rows_json.encode()).hexdigest()[:16]

"""Thresholds on ΔP and writing the kept samples (the input is never altered).

A threshold is a raw ΔP value (``--drop-above 1.5``) or a percentile (``--drop-above p95``) of
ΔP on reference data believed clean (``--reference clean.jsonl``; the paper used the 95th), or of
the screened data itself when no reference is given. With several vectors each has its own
threshold, and a sample is kept only when every vector's ΔP is finite and at most its threshold.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personavec.errors import PersonavecError
from personavec.screening.data import iter_rows, source_kind
from personavec.screening.table import iter_scores
from personavec.store import atomic_output


@dataclass(frozen=True)
class DropRule:
    """``value`` is a raw ΔP when ``percentile`` is False, else a percentile in [0, 100]."""

    value: float
    percentile: bool

    @classmethod
    def parse(cls, text: str) -> DropRule:
        """``"p95"`` / ``"95%"`` → the 95th percentile; ``"1.5"`` → raw ΔP 1.5."""
        raw = text.strip().lower()
        is_pct = raw.startswith("p") or raw.endswith("%")
        number = raw.removeprefix("p").removesuffix("%")
        try:
            value = float(number)
        except ValueError:
            raise PersonavecError(
                f"cannot read --drop-above {text!r}; give a ΔP value (1.5) or a percentile (p95)"
            ) from None
        if not np.isfinite(value) or (is_pct and not 0 <= value <= 100):
            raise PersonavecError(f"--drop-above {text!r} is out of range; percentiles are 0–100")
        return cls(value, is_pct)


def thresholds(rule: DropRule, reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Threshold per score column: ``rule.value``, or its percentile of ``reference[column]``."""
    out: dict[str, float] = {}
    for column, values in reference.items():
        if not rule.percentile:
            out[column] = rule.value
            continue
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise PersonavecError(f"no finite {column} values to take a percentile of")
        out[column] = float(np.percentile(finite, rule.value))
    return out


def _raw_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(index, line)`` for each non-blank line of a JSONL file, exactly as written."""
    index = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield index, line if line.endswith("\n") else line + "\n"
                index += 1


def _raw_rows(path: Path) -> Iterator[tuple[int, str]]:
    if source_kind(path) == "jsonl":
        yield from _raw_lines(path)
        return
    for index, (row, _, _) in enumerate(iter_rows(path)):
        yield index, json.dumps(row, ensure_ascii=False, default=str) + "\n"


def keeps(row: Mapping[str, Any], limits: Mapping[str, float]) -> bool:
    """Whether a scored row stays: every column finite and at most its threshold."""
    if row.get("skipped") is not None:
        return False
    for column, limit in limits.items():
        value = row.get(column)
        if value is None or not np.isfinite(value) or float(value) > limit:
            return False
    return True


@dataclass(frozen=True)
class FilterResult:
    """Where the kept rows went and how many rows were kept and dropped."""

    path: Path
    kept: int
    dropped: int


def write_filtered(
    data: str | Path, scores: str | Path, limits: Mapping[str, float], out: str | Path
) -> FilterResult:
    """Write the input rows that :func:`keeps` accepts to ``out`` (JSONL, atomically).

    JSONL input lines are copied byte for byte; other sources are written as JSON objects.
    ``scores`` must cover every input row (a run without ``--sample``).
    """
    source, target = Path(data), Path(out)
    if target.resolve() == source.resolve():
        raise PersonavecError("--write-filtered would overwrite the input; pass another path")
    verdicts = iter_scores(scores)
    kept = dropped = 0
    with atomic_output(target) as handle:
        for index, line in _raw_rows(source):
            row = next(verdicts, None)
            if row is None or int(row["index"]) != index:
                raise PersonavecError(
                    f"the scores do not cover input row {index}; finish the screen (without "
                    "--sample) before filtering"
                )
            if keeps(row, limits):
                handle.write(line)
                kept += 1
            else:
                dropped += 1
    return FilterResult(target, kept, dropped)

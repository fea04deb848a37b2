"""Project conversations in a JSONL file onto persona vectors (``personavec project``).

Rows are parsed by :func:`personavec.runs.chat_rows.parse_chat_row` in its ``optional`` mode
(the same parser as ``screen``, ``finetune`` and ``steer``): ``{"messages": [...]}`` chats (a
chat that ends with a user turn is prompt-only), ``{"prompt"|"question": ..., "response": ...}``
rows (``response_token_ids`` wins over the text when present) and ``{"text": ...}`` prompts.

Other keys are kept untouched. For every vector (trait ``T`` at layer ``L``) each row gains:

* ``proj.T.LL.prompt_last``: projection of the last prompt token (the one predicting the answer);
* ``proj.T.LL.response_avg``: projection of the mean over response tokens (``None`` without one);
* ``proj.T.LL.tokens`` (with ``per_token``): per-response-token projections, or per prompt token
  when there is no response;
* ``proj.T.LL.turns`` (chats with more than one user turn): the ``response_avg`` projection of
  each assistant turn given the turns before it (``None`` for an empty turn), so drift over a
  conversation is visible.

Projections are scalar projections ``h · v / ‖v‖`` in hidden-state units.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from personavec.core.capture import Example, capture, capture_tokens
from personavec.core.layers import check_layer
from personavec.core.models import LoadedModel
from personavec.core.projection import project, token_projections
from personavec.core.vector import PersonaVector
from personavec.errors import PersonavecError
from personavec.runs.chat_rows import parse_chat_row
from personavec.store import atomic_write_text

READOUTS_USED = ("prompt_last", "response_avg")


@dataclass
class ParsedRow:
    """One input row turned into capture examples.

    Attributes:
        example: the prompt (messages up to the last assistant turn) and the response.
        has_response: whether the row has a non-empty response.
        turns: for multi-turn chats, each assistant turn with its preceding context; else None.
    """

    example: Example
    has_response: bool
    turns: list[Example] | None = field(default=None)


def column(trait: str, layer: int, readout: str) -> str:
    """Output column name, e.g. ``proj.evil.L15.response_avg``."""
    return f"proj.{trait}.L{layer}.{readout}"


def parse_row(row: Any, where: str) -> ParsedRow:
    """Turn one input row into examples; raise a one-line :class:`PersonavecError` if invalid."""
    parsed = parse_chat_row(row, where, "optional")
    messages = parsed.messages
    turns = None
    if sum(m["role"] == "user" for m in messages) > 1:
        turns = [
            Example(messages[:i], m["content"])
            for i, m in enumerate(messages)
            if m["role"] == "assistant" and any(p["role"] == "user" for p in messages[:i])
        ]
    example = Example(parsed.prompt, parsed.response, parsed.response_ids)
    return ParsedRow(example, parsed.has_response, turns)


def resolve_vector_layers(
    vectors: Sequence[tuple[str, PersonaVector]], layer: int | None
) -> dict[str, int]:
    """Layer per vector name: ``layer`` when given, else each vector's recommended layer."""
    chosen: dict[str, int] = {}
    for name, vector in vectors:
        if name in chosen:
            raise PersonavecError(
                f"two vectors are both named {name!r}; pass vectors of different traits"
            )
        chosen[name] = vector.layer_or_recommended(layer)
    return chosen


def vocabulary_size(loaded: LoadedModel) -> int:
    """Rows of the model's input embedding: token ids must lie in ``[0, size)``."""
    weight = loaded.model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0])


def check_token_ids(parsed: Sequence[ParsedRow], where: Sequence[str], vocab_size: int) -> None:
    """Raise a one-line error naming the first row whose ``response_token_ids`` leave the vocab."""
    for label, row in zip(where, parsed, strict=True):
        ids = row.example.response_ids
        if ids is None:
            continue
        bad = next((i for i in ids if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise PersonavecError(
                f"{label}: response_token_ids holds {bad}, outside the model's vocabulary "
                f"0..{vocab_size - 1}; these ids come from another tokenizer — drop them to "
                "use the response text, or pass the model that produced them"
            )


def _checked_inputs(
    loaded: LoadedModel,
    records: Sequence[Mapping[str, Any]],
    vectors: list[tuple[str, PersonaVector]],
    layers: dict[str, int] | None,
    labels: Sequence[str] | None,
) -> tuple[list[ParsedRow], dict[str, int]]:
    """Parse every row and check ids, vectors and layers; return the rows and layer per vector."""
    if not records:
        raise PersonavecError("there are no rows to project; give at least one")
    if not vectors:
        raise PersonavecError("no persona vectors given; pass at least one --vector")
    where = list(labels) if labels is not None else [f"row {i}" for i in range(1, len(records) + 1)]
    parsed = [parse_row(row, where[i]) for i, row in enumerate(records)]
    check_token_ids(parsed, where, vocabulary_size(loaded))
    chosen = layers if layers is not None else resolve_vector_layers(vectors, None)
    missing = [name for name, _ in vectors if name not in chosen]
    if missing:
        raise PersonavecError(f"no layer given for vector(s) {missing}; pass --layer")
    for name, vector in vectors:
        check_layer(chosen[name], vector.meta.n_layers)
        vector.check_compatible(loaded.model, force=True)  # hidden size must always match
    return parsed, chosen


def _with_turns(parsed: Sequence[ParsedRow]) -> tuple[list[Example], list[tuple[int, int] | None]]:
    """Every row's example followed by all chat turns; each row's ``[start, end)`` of turns."""
    examples = [p.example for p in parsed]
    turn_spans: list[tuple[int, int] | None] = []
    for p in parsed:
        if p.turns is None:
            turn_spans.append(None)
        else:
            turn_spans.append((len(examples), len(examples) + len(p.turns)))
            examples.extend(p.turns)
    return examples, turn_spans


def _readout_projections(
    loaded: LoadedModel,
    examples: Sequence[Example],
    chosen: dict[str, int],
    directions: dict[str, torch.Tensor],
    batch_size: int,
) -> dict[tuple[str, str], list[float]]:
    """Projection of each example's readouts, keyed by ``(vector name, readout)``."""
    result = capture(
        loaded,
        examples,
        layers=sorted(set(chosen.values())),
        readouts=READOUTS_USED,
        keep_per_example=True,
        batch_size=batch_size,
    )
    assert result.per_example is not None
    projections: dict[tuple[str, str], list[float]] = {}
    for name, layer in chosen.items():
        position = result.layers.index(layer)
        for readout in READOUTS_USED:
            values = project(result.per_example[readout][:, position], directions[name])
            projections[(name, readout)] = [float(x) for x in values.tolist()]
    return projections


def project_records(
    loaded: LoadedModel,
    records: Sequence[Mapping[str, Any]],
    vectors: list[tuple[str, PersonaVector]],
    layers: dict[str, int] | None = None,
    *,
    per_token: bool = False,
    batch_size: int = 8,
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``records`` with projection columns added (see the module docstring).

    Args:
        loaded: the model the vectors were extracted from.
        records: input rows (chat, prompt/response, rollout or text rows).
        vectors: ``(name, vector)`` pairs; ``name`` (usually the trait) names the columns.
        layers: layer per vector name; default each vector's recommended layer.
        per_token: also add per-token projections.
        batch_size: examples per forward pass.
        labels: how errors refer to each row (default ``row N``).
    """
    parsed, chosen = _checked_inputs(loaded, records, vectors, layers, labels)
    chosen = {name: chosen[name] for name, _ in vectors}
    directions = {name: vector.at(chosen[name]).float() for name, vector in vectors}
    examples, turn_spans = _with_turns(parsed)
    projections = _readout_projections(loaded, examples, chosen, directions, batch_size)
    capture_layers = sorted(set(chosen.values()))
    output: list[dict[str, Any]] = []
    for index, (row, p) in enumerate(zip(records, parsed, strict=True)):
        new = dict(row)
        tokens = capture_tokens(loaded, p.example, layers=capture_layers) if per_token else None
        for name, layer in chosen.items():
            new[column(name, layer, "prompt_last")] = projections[(name, "prompt_last")][index]
            avg = projections[(name, "response_avg")][index]
            new[column(name, layer, "response_avg")] = avg if p.has_response else None
            if tokens is not None:
                per = token_projections(tokens, layer, directions[name])
                cut = per[tokens.prompt_length :] if p.has_response else per[: tokens.prompt_length]
                new[column(name, layer, "tokens")] = [float(x) for x in cut.tolist()]
            span = turn_spans[index]
            if span is not None:
                assert p.turns is not None
                turn_values = projections[(name, "response_avg")][span[0] : span[1]]
                new[column(name, layer, "turns")] = [
                    value if turn.response else None
                    for value, turn in zip(turn_values, p.turns, strict=True)
                ]
        output.append(new)
    return output


def read_input(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a JSONL input and a ``file:line`` label for each; every row is validated."""
    source = Path(path)
    if not source.is_file():
        raise PersonavecError(f"input file not found: {source}; check the path")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonavecError(f"cannot read {source}: {exc}; pass a UTF-8 JSONL file") from None
    rows: list[dict[str, Any]] = []
    labels: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            message = f"{where} is not valid JSON; repair or delete that line"
            raise PersonavecError(message) from None
        parse_row(row, where)
        rows.append(row)
        labels.append(where)
    if not rows:
        raise PersonavecError(f"{source} has no rows; give one JSON object per line")
    return rows, labels


def default_output(input_path: str | Path) -> Path:
    """``data.jsonl`` → ``data.projected.jsonl``."""
    source = Path(input_path)
    stem = source.name.removesuffix(".jsonl")
    return source.with_name(f"{stem}.projected.jsonl")


def load_vectors(
    loaded: LoadedModel, vector_paths: Sequence[str | Path], *, force: bool = False
) -> list[tuple[str, PersonaVector]]:
    """Load and check vector files against ``loaded``; name each by its trait."""
    return [
        (vector.meta.trait, vector)
        for vector in (
            PersonaVector.load(path, model=loaded.model, force=force) for path in vector_paths
        )
    ]


def project_file(
    loaded: LoadedModel,
    input_path: str | Path,
    output_path: str | Path | None,
    vector_paths: Sequence[str | Path],
    layer: int | None = None,
    per_token: bool = False,
    force: bool = False,
    *,
    batch_size: int = 8,
) -> Path:
    """Project every row of a JSONL file and write the rows, with projections, atomically.

    Args:
        loaded: the model the vectors belong to.
        input_path: JSONL input (see the module docstring for row formats).
        output_path: where to write; default ``INPUT.projected.jsonl``.
        vector_paths: persona-vector files; columns are named by each file's trait.
        layer: layer for every vector; default each vector's recommended layer.
        per_token: also write per-token projections.
        force: accept vectors from a related model (same hidden size).

    Returns the output path. Nothing is written when any row or vector is invalid.
    """
    target = Path(output_path) if output_path is not None else default_output(input_path)
    if target.resolve() == Path(input_path).resolve():
        raise PersonavecError("the output would overwrite the input; pass another --out")
    rows, labels = read_input(input_path)
    vectors = load_vectors(loaded, vector_paths, force=force)
    chosen = resolve_vector_layers(vectors, layer)
    projected = project_records(
        loaded, rows, vectors, chosen, per_token=per_token, batch_size=batch_size, labels=labels
    )
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in projected)
    return atomic_write_text(target, text)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean of every scalar projection column over rows that have a value (for the CLI)."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("proj.") and isinstance(value, float):
                sums.setdefault(key, []).append(value)
    return {key: float(torch.tensor(values).mean()) for key, values in sums.items()}

"""The screening engine as a Ray Data pipeline (``personavec screen --engine ray``).

1. The selected rows are written, streaming, to ``ray_input.parquet`` in the run directory.
2. ``read_parquet → map_batches(ScreenWorker, compute=ActorPoolStrategy(size=actors))``: a
   pool of actors, each holding the model and the vectors, scores batches with the same
   :func:`score_batch` as the in-process engine (generation + capture), with ``num_gpus`` per
   actor when asked.
3. The scored rows are written as Parquet (``ray_output/``), then appended in input order to
   ``scores.jsonl`` so the summary, report and filtering are shared with the in-process engine.

Locally ``ray.init()`` starts a private Ray; with an address it joins an existing cluster (the
run directory and the model must then be readable by every node: a shared filesystem).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personavec.errors import PersonavecError
from personavec.screening.data import BadRow, Sample, iter_samples
from personavec.screening.score import ScoreSettings, make_targets, score_batch
from personavec.store import append_jsonl, atomic_output


class RayEngineError(PersonavecError):
    """Ray is missing, or the cluster cannot be reached."""


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray.

    Attributes:
        address: an existing cluster (``host:port``, ``ray://host:port`` or ``auto``); None
            starts a local Ray.
        actors: model actors in the pool (each loads the model once).
        cpus_per_actor: CPUs reserved per actor (also its torch thread count).
        gpus_per_actor: GPUs per actor (0 on CPU machines).
        num_cpus: CPUs of a local Ray (None = all).
    """

    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    num_cpus: int | None = None


def _check_reachable(address: str) -> None:
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            return
    except (OSError, ValueError):
        raise RayEngineError(
            f"cannot reach a Ray cluster at {address}; check the address (`ray status` on the "
            "head node) or omit --ray-address to run locally"
        ) from None


def start_ray(options: RayOptions) -> bool:
    """Connect to (or start) Ray; return whether this call started it (so it should stop it)."""
    try:
        import ray
    except ImportError:
        raise RayEngineError("--engine ray needs Ray: pip install 'personavec[ray]'") from None
    if ray.is_initialized():
        return False
    if options.address is not None:
        _check_reachable(options.address)
    try:
        ray.init(
            address=options.address,
            num_cpus=local_cpus(options) if options.address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayEngineError(f"cannot start or join Ray at {options.address}: {first}") from None
    return True


def local_cpus(options: RayOptions) -> int:
    """CPUs a local Ray declares: at least the actors' reservation plus one for reading/writing.

    Ray's CPUs are scheduling slots: if the actors held them all, the Parquet read and write tasks
    could never run and the pipeline would wait forever.
    """
    wanted = options.num_cpus or os.cpu_count() or 1
    return max(wanted, math.ceil(options.actors * options.cpus_per_actor) + 1)


def check_capacity(options: RayOptions) -> None:
    """Refuse a pool that would leave no CPU for Ray Data's read and write tasks."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0))
    needed = options.actors * options.cpus_per_actor + 1
    if cpus < needed:
        raise RayEngineError(
            f"the Ray cluster has {cpus:g} CPUs but {options.actors} actors × "
            f"{options.cpus_per_actor:g} CPUs + 1 for reading need {needed:g}; use fewer "
            "--actors or --cpus-per-actor"
        )


class ScreenWorker:
    """A Ray actor: loads the model and vectors once, then scores batches of rows."""

    def __init__(
        self,
        model: str,
        vectors: list[bytes],
        layer: int | None,
        settings: dict[str, Any],
        force: bool,
        threads: int,
        device: str,
    ) -> None:
        import torch

        from personavec.core.models import load_model
        from personavec.core.vector import PersonaVector
        from personavec.engines.generation import HFEngine

        torch.set_num_threads(max(1, threads))
        self.loaded = load_model(model, device=device)
        parsed = [PersonaVector.from_bytes(b) for b in vectors]
        for vector in parsed:
            vector.check_compatible(self.loaded.model, force=force)
        self.targets = make_targets(parsed, layer)
        self.settings = ScoreSettings(**settings)
        self.engine = HFEngine(self.loaded) if self.settings.mode == "full" else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from personavec.core.capture import Example

        samples = []
        for i in range(len(batch["index"])):
            own = batch["own_response"][i]
            samples.append(
                Sample(
                    int(batch["index"][i]),
                    str(batch["id"][i]),
                    Example(json.loads(batch["messages"][i]), str(batch["response"][i])),
                    None if own is None or own == "" else str(own),
                )
            )
        rows, _ = score_batch(self.loaded, samples, self.targets, self.settings, self.engine)
        columns: dict[str, np.ndarray] = {}
        for name in rows[0]:
            values = [row[name] for row in rows]
            if name in ("id", "own_response"):
                columns[name] = np.asarray(values, dtype=object)
            elif name == "index":
                columns[name] = np.asarray(values, dtype=np.int64)
            else:
                columns[name] = np.asarray(
                    [np.nan if v is None else v for v in values], dtype=np.float64
                )
        return columns


def write_ray_input(
    data: str | Path,
    target: Path,
    *,
    own_column: str | None,
    start: int,
    keep: set[int] | None,
) -> tuple[int, list[BadRow]]:
    """Write the selected rows from ``start`` on as Parquet; return (rows written, bad rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("index", pa.int64()),
            ("id", pa.string()),
            ("messages", pa.string()),
            ("response", pa.string()),
            ("own_response", pa.string()),
        ]
    )
    written = 0
    bad: list[BadRow] = []
    chunk: list[Sample] = []
    with atomic_output(target, "wb") as handle:
        writer = pq.ParquetWriter(handle, schema)

        def flush() -> None:
            columns = {
                "index": [s.index for s in chunk],
                "id": [s.id for s in chunk],
                "messages": [json.dumps(list(s.example.messages)) for s in chunk],
                "response": [s.example.response for s in chunk],
                "own_response": [s.own_response for s in chunk],
            }
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            chunk.clear()

        for item in iter_samples(data, own_column=own_column, start=start):
            if keep is not None and item.index not in keep:
                continue
            if isinstance(item, BadRow):
                bad.append(item)
                continue
            chunk.append(item)
            written += 1
            if len(chunk) >= 1024:
                flush()
        if chunk:
            flush()
        writer.close()
    return written, bad


def _to_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    names = list(batch)
    rows = []
    for i in range(len(batch["index"])):
        row: dict[str, Any] = {}
        for name in names:
            value = batch[name][i]
            if isinstance(value, (float, np.floating)):
                row[name] = None if np.isnan(value) else float(value)
            elif isinstance(value, (np.integer,)):
                row[name] = int(value)
            else:
                row[name] = value
        rows.append(row)
    return rows


def run_on_ray(
    run_dir: Path,
    *,
    model: str,
    vector_paths: Sequence[str],
    layer: int | None,
    settings: ScoreSettings,
    force: bool,
    options: RayOptions,
    bad: Sequence[BadRow],
) -> int:
    """Score ``run_dir/ray_input.parquet`` on Ray and append the rows (and ``bad``) in order."""
    import ray

    check_capacity(options)
    device = "cuda" if options.gpus_per_actor > 0 else "cpu"
    worker_args = {
        "model": model,
        "vectors": [Path(p).read_bytes() for p in vector_paths],
        "layer": layer,
        "settings": {
            "mode": settings.mode,
            "max_new_tokens": settings.max_new_tokens,
            "batch_size": settings.batch_size,
        },
        "force": force,
        "threads": max(1, int(options.cpus_per_actor)),
        "device": device,
    }
    source = ray.data.read_parquet(str(run_dir / "ray_input.parquet"))
    scored = source.map_batches(
        ScreenWorker,
        fn_constructor_kwargs=worker_args,
        batch_size=settings.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
    )
    output = run_dir / "ray_output"
    scored.write_parquet(str(output))
    pending = sorted(bad, key=lambda b: b.index)
    done = 0
    ordered = ray.data.read_parquet(str(output)).sort("index")
    for batch in ordered.iter_batches(batch_size=1024, batch_format="numpy"):
        rows = _to_rows(batch)
        for row in rows:
            row.setdefault("skipped", None)
        last = rows[-1]["index"]
        extra = [b for b in pending if b.index < last]
        pending = pending[len(extra) :]
        rows += [{"index": b.index, "id": str(b.index), "skipped": b.reason} for b in extra]
        rows.sort(key=lambda r: int(r["index"]))
        append_jsonl(run_dir / "scores.jsonl", rows)
        done += len(rows)
    tail = [{"index": b.index, "id": str(b.index), "skipped": b.reason} for b in pending]
    append_jsonl(run_dir / "scores.jsonl", tail)
    return done + len(tail)

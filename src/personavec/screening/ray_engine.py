"""The screening engine on Ray (``personavec screen --engine ray``): a pool of model actors.

The driver streams the selected rows from the data (as the in-process engine does), sends each
batch to one of ``actors`` Ray actors — each holds the model and the vectors and scores with the
same :func:`score_batch` as the in-process engine, with ``num_gpus`` per actor when asked — and
appends every finished batch to ``scores.jsonl`` *in input order* as soon as it and the batches
before it are back (at most two batches per actor are in flight). A killed run therefore keeps
every appended batch, and the next run (same command) starts after the last finished row and
scores no row twice; a finished run re-run is a no-op. The summary, report and filtering are
shared with the in-process engine.

Locally ``ray.init()`` starts a private Ray; with an address it joins an existing cluster (the
data is read by the driver; the model and vectors must be readable by every node).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from personavec.core.estimators import requested_estimator
from personavec.errors import PersonavecError
from personavec.screening.data import BadRow, Sample
from personavec.screening.score import ScoreSettings, make_targets, score_batch
from personavec.store import append_jsonl


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

    def device(self) -> str:
        """Where the actors put the model: CUDA when they hold GPUs, else the CPU."""
        return "cuda" if self.gpus_per_actor > 0 else "cpu"


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
    """CPUs a local Ray declares: ``num_cpus`` (default all), at least the actors' reservation
    (Ray's CPUs are scheduling slots; an actor that cannot get its slots would wait forever)."""
    wanted = options.num_cpus or os.cpu_count() or 1
    return max(wanted, math.ceil(options.actors * options.cpus_per_actor))


def check_capacity(options: RayOptions) -> None:
    """Refuse a pool the cluster cannot place (its actors would wait forever)."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0))
    needed = options.actors * options.cpus_per_actor
    if cpus < needed:
        raise RayEngineError(
            f"the Ray cluster has {cpus:g} CPUs but {options.actors} actors × "
            f"{options.cpus_per_actor:g} CPUs need {needed:g}; use fewer --actors or "
            "--cpus-per-actor"
        )


class ScreenWorker:
    """A Ray actor: loads the model and vectors once, then scores batches of samples."""

    def __init__(
        self,
        model: str,
        vectors: list[bytes],
        layer: int | None,
        settings: dict[str, Any],
        force: bool,
        threads: int,
        device: str,
        dtype: str | None = None,
        estimator: str | None = None,
        generator: str = "hf",
    ) -> None:
        import torch

        from personavec.core.models import load_model
        from personavec.core.vector import PersonaVector
        from personavec.engines.factory import make_engine

        torch.set_num_threads(max(1, threads))
        self.loaded = load_model(model, device=device, dtype=dtype)
        parsed = [PersonaVector.from_bytes(b).with_estimator(estimator) for b in vectors]
        for vector in parsed:
            vector.check_compatible(self.loaded.model, force=force)
        self.targets = make_targets(parsed, layer)
        self.settings = ScoreSettings(**settings)
        full = self.settings.mode == "full"
        self.engine = make_engine(generator, self.loaded) if full else None

    def score(self, samples: list[Sample]) -> list[dict[str, Any]]:
        """The rows of :func:`score_batch` for ``samples``."""
        rows, _ = score_batch(self.loaded, samples, self.targets, self.settings, self.engine)
        return rows


def skipped_rows(bad: Sequence[BadRow]) -> list[dict[str, Any]]:
    """The table rows of bad rows (kept in the table with their reason)."""
    return [{"index": b.index, "id": str(b.index), "skipped": b.reason} for b in bad]


@dataclass(frozen=True)
class RayJob:
    """What the actors need: the model spec, vector bytes and how to score."""

    model: str
    vector_paths: Sequence[str]
    layer: int | None
    settings: ScoreSettings
    force: bool
    dtype: str | None = None
    generator: str = "hf"


def _start_actors(job: RayJob, options: RayOptions) -> list[Any]:
    import ray

    check_capacity(options)
    actor = ray.remote(ScreenWorker).options(
        num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor
    )
    args = {
        "model": job.model,
        "vectors": [Path(p).read_bytes() for p in job.vector_paths],
        "layer": job.layer,
        "settings": asdict(job.settings),
        "force": job.force,
        "threads": max(1, int(options.cpus_per_actor)),
        "device": options.device(),
        "dtype": job.dtype,
        "estimator": requested_estimator(),  # the driver's --estimator (actors may not see env)
        "generator": job.generator,  # own responses: hf, or a vLLM engine inside each actor
    }
    return [actor.remote(**args) for _ in range(options.actors)]


def run_on_ray(
    table: Path,
    batches: Iterable[tuple[list[Sample], list[BadRow]]],
    job: RayJob,
    options: RayOptions,
    *,
    advance: Callable[[int], None] = lambda done: None,
) -> int:
    """Score ``batches`` on a pool of actors; append each batch's rows (and its bad rows) to
    ``table`` in input order as soon as it is back. Returns the rows appended.

    The actors are started at the first batch that has samples (none for a finished run).
    """
    import ray

    actors: list[Any] = []
    pending: deque[tuple[Any, list[BadRow]]] = deque()
    done = 0

    def flush_one() -> None:
        nonlocal done
        ref, bad = pending.popleft()
        rows = (ray.get(ref) if ref is not None else []) + skipped_rows(bad)
        rows.sort(key=lambda r: int(r["index"]))
        append_jsonl(table, rows)
        done += len(rows)
        advance(done)

    for number, (samples, bad) in enumerate(batches):
        ref = None
        if samples:
            actors = actors or _start_actors(job, options)
            ref = actors[number % len(actors)].score.remote(samples)
        pending.append((ref, bad))
        while len(pending) > 2 * max(1, options.actors):
            flush_one()
    while pending:
        flush_one()
    return done

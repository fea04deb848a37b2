"""Settings of one server: where it listens, what it serves, and its limits."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from personavec.engines.factory import check_engine
from personavec.errors import PersonavecError

API_KEY_ENV = "PERSONAVEC_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    """What ``personavec serve`` runs.

    Attributes:
        model: model spec (``smollm2``, a checkpoint directory, a hub id).
        vectors_dir: folder of ``*.safetensors`` persona vectors (name = file stem); None: none.
        host, port: where to listen; only a loopback host may run without an API key.
        api_key: required as ``Authorization: Bearer KEY`` on ``/v1`` when set.
        max_batch: most sequences (request × choice) decoded in one batch.
        max_queue: most sequences waiting; more gets 429.
        max_tokens_limit: largest ``max_tokens`` a request may ask for.
        max_body_bytes: largest request body; more gets 413.
        request_timeout_s: a request still unfinished after this many seconds is cancelled (504).
        batch_wait_ms: how long the scheduler waits for more requests before starting a batch.
        engine: ``hf`` (the server's own continuous batching) or ``vllm``.
    """

    model: str = "smollm2"
    vectors_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_tokens_limit: int = 512
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 300.0
    batch_wait_ms: float = 10.0
    engine: str = "hf"

    def __post_init__(self) -> None:
        if self.api_key is None and os.environ.get(API_KEY_ENV):
            object.__setattr__(self, "api_key", os.environ[API_KEY_ENV])
        if self.api_key == "":
            raise PersonavecError("the API key is empty; pass a non-empty --api-key")
        if not is_loopback(self.host) and self.api_key is None:
            raise PersonavecError(
                f"binding to {self.host} exposes the server beyond this machine; pass --api-key "
                f"(or set {API_KEY_ENV}), or bind to 127.0.0.1"
            )
        for name in ("max_batch", "max_queue", "max_tokens_limit", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise PersonavecError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < self.max_batch:
            raise PersonavecError("max_queue must be at least max_batch")
        if not self.request_timeout_s > 0 or self.batch_wait_ms < 0:
            raise PersonavecError("request_timeout_s must be > 0 and batch_wait_ms >= 0")
        if not 0 <= self.port <= 65535:
            raise PersonavecError(f"port must be in 0..65535, got {self.port}")
        check_engine(self.engine)
        if self.vectors_dir is not None and not Path(self.vectors_dir).is_dir():
            raise PersonavecError(f"--vectors {self.vectors_dir} is not a folder; pass one")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

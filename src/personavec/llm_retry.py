"""When an LLM request is retried, how long it waits, and how long it may take."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Literal

from personavec.errors import PersonavecError

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
"""HTTP statuses worth another attempt."""
DEFAULT_TIMEOUT_S = 120.0
TIMEOUT_ENV = "PERSONAVEC_JUDGE_TIMEOUT"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter.

    Attempt ``k`` (1-based) that fails transiently waits a uniform random time in
    ``[0, min(max_delay_s, base_delay_s * 2**(k-1))]`` seconds, or the server's ``Retry-After``
    (capped at ``max_retry_after_s``) when it sends one.
    """

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0
    max_retry_after_s: float = 120.0

    def delay_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return rng.uniform(0.0, cap)


@dataclass
class Transient:
    """What a retryable failure looked like, for the final error message."""

    reason: str
    retry_after_s: float | None = None
    kind: Literal["server", "unreachable", "timeout", "malformed"] = "server"


def resolve_timeout_s(timeout_s: float | None) -> float:
    """``timeout_s``, else ``$PERSONAVEC_JUDGE_TIMEOUT``, else 120; must be a positive number."""
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_TIMEOUT_S
        try:
            timeout_s = float(raw)
        except ValueError:
            raise PersonavecError(
                f"{TIMEOUT_ENV}={raw!r} is not a number of seconds; set it to e.g. 300"
            ) from None
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise PersonavecError(
            f"the judge timeout must be a positive number of seconds, got {timeout_s}"
        )
    return float(timeout_s)

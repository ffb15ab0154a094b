"""How soon to retry a key whose reconcile hit a transient fault: a pure decision.

Kopf retries a handler that raised an arbitrary exception after 60 s, and the operator
used to wait 30 s after a provider fault. After a Kubernetes API outage every key that
was mid-way then waited that long, although the API was back in seconds. So: exponential
from a short base, with a cap per kind of fault, and jitter so that the keys that failed
together do not all come back in the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import StrEnum


class Fault(StrEnum):
    API = "api"  # the Kubernetes API (and the key records kept on it) unreachable
    PROVIDER = "provider"  # the key provider unavailable, or a rotation it refused


# (first delay, cap) in seconds. A refused connection to the API costs it nothing, and its
# return should be met within seconds; a provider outage is retried more gently.
BACKOFF: dict[Fault, tuple[float, float]] = {Fault.API: (1.0, 8.0), Fault.PROVIDER: (2.0, 30.0)}
JITTER = 0.2


def retry_delay(attempt: int, fault: Fault,
                rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``attempt`` (0 for the first) after ``fault``."""
    first, cap = BACKOFF[fault]
    delay = min(cap, first * 2 ** min(max(0, attempt), 16))
    return delay * (1 - JITTER + 2 * JITTER * rng())

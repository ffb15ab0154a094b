"""Refused requests, audited without letting them flood the audit log.

A refusal before a key is reached (no token, a bad or expired token, RBAC, another
environment) is audited, but an unauthenticated client must not be able to grow the
fsynced chain at will.  So:

- what a denial records is bounded (key name, reason and actor are cut to a few hundred
  characters, whatever the request held);
- denials are aggregated per source (the caller, or the client address when there is no
  caller) and refusal code: the first one of an interval is written at once, the rest of
  that interval become one entry with their ``count`` when the interval ends;
- a denial is only ever written to a service that already exists: nothing (no
  environment folder, no checkpoint key) is created for a request that was refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qkms.errors import QkmsError

log = logging.getLogger("key-management:server")

INTERVAL = 60.0
MAX_NAME = 300  # a namespace/name as Kubernetes allows it, and a note of what was cut
MAX_TEXT = 256
MAX_WINDOWS = 10_000


def bounded(text: Any, limit: int = MAX_TEXT) -> str:
    value = str(text)
    return value if len(value) <= limit else f"{value[:limit]}...({len(value) - limit} more)"


@dataclass
class _Window:
    started: float
    service: Any
    operation: str
    key: str
    actor: dict[str, str]
    error: QkmsError
    count: int = 0  # denials after the first, not yet written
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class Denials:
    def __init__(self, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.written = 0
        self.aggregated = 0

    async def record(self, service: Any, source: str, operation: str, key: str,
                     actor: dict[str, str], error: QkmsError) -> None:
        """Audit one refusal (at once, or counted into its source's interval)."""
        if service is None:
            return  # no service to write to: nothing is created for a refused request
        ident = (service.environment.value, bounded(source, MAX_NAME), error.code)
        now = self.clock()
        window = self._windows.get(ident)
        if window is not None and now - window.started < self.interval:
            window.count += 1
            window.operation, window.key, window.error = operation, key, error
            self.aggregated += 1
            return
        if window is not None:
            await self._flush(ident, window)
        if len(self._windows) >= MAX_WINDOWS:  # many sources: write what is pending now
            await self.flush()
        window = _Window(now, service, operation, key, actor, error)
        self._windows[ident] = window
        window.timer = asyncio.get_running_loop().call_later(self.interval, self._due, ident)
        self.written += 1
        await service.audit_denied(operation, bounded(key, MAX_NAME), _actor(actor), error,
                                   details={"source": ident[1]})

    def _due(self, ident: tuple[str, str, str]) -> None:
        window = self._windows.get(ident)
        if window is None:
            return
        task = asyncio.get_running_loop().create_task(self._flush(ident, window))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, ident: tuple[str, str, str], window: _Window) -> None:
        if self._windows.get(ident) is window:
            del self._windows[ident]
        if window.timer is not None:
            window.timer.cancel()
        if window.count == 0:
            return
        count, window.count = window.count, 0
        self.written += 1
        try:
            await window.service.audit_denied(
                window.operation, bounded(window.key, MAX_NAME), _actor(window.actor),
                window.error, details={"source": ident[1], "count": str(count),
                                       "interval_seconds": f"{self.interval:g}"})
        except Exception:  # never lose the server over an audit write; the service logged it
            log.exception("could not audit %d aggregated denials", count)

    async def flush(self) -> None:
        """Write every pending count now (shutdown)."""
        for ident, window in list(self._windows.items()):
            await self._flush(ident, window)


def _actor(actor: dict[str, str]) -> dict[str, str]:
    return {"type": bounded(actor.get("type", "ANONYMOUS"), 32),
            "id": bounded(actor.get("id", "none"), MAX_NAME)}

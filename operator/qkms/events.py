"""The service's event stream: ``on(event, callback)`` as in the seed.

Callbacks may be plain functions or coroutines.  A failing callback is logged
and never breaks the operation that emitted the event.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("key-management:events")

EVENTS = ("keyCreated", "keyRotated", "keyRevoked", "keyDeleted", "auditEvent")


class EventBus:
    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[[Any], Any]]] = defaultdict(list)

    def on(self, event: str, callback: Callable[[Any], Any]) -> None:
        if event not in EVENTS:
            raise ValueError(f"event: unknown event {event!r}; known: {', '.join(EVENTS)}")
        self._listeners[event].append(callback)

    def off(self, event: str, callback: Callable[[Any], Any]) -> None:
        if callback in self._listeners.get(event, []):
            self._listeners[event].remove(callback)

    async def emit(self, event: str, payload: Any) -> None:
        for callback in list(self._listeners.get(event, ())):
            try:
                result = callback(payload)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a listener must not break the operation
                log.exception("listener for %s failed", event)

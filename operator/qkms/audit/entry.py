"""A plain audit entry and the sink protocol the service writes to.

Entries record who did what to which key and how it ended, plus keyed digests
(HMAC-SHA256 under the environment's audit MAC key, ``qkms.audit.mac``) of the
data handled; never the data, never key material.  The hash-chained,
CID-addressed log implements ``AuditSink``; ``MemoryAuditLog`` keeps recent
entries in memory for tests and when audit is disabled.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Actor:
    type: str = "SERVICE"
    id: str = "qkms"

    @classmethod
    def parse(cls, value: Any) -> Actor:
        if value is None:
            return SERVICE if cls is Actor else cls()
        if isinstance(value, Actor):
            return value
        if isinstance(value, dict):
            return cls(type=str(value.get("type", "USER")), id=str(value.get("id", "unknown")))
        return cls(type="USER", id=str(value))


SERVICE = Actor()  # the actor of calls that name none: one frozen instance for them all


@dataclass(frozen=True)
class AuditEntry:
    time: datetime
    environment: str
    operation: str
    result: str  # success | denied | error
    actor: Actor = field(default_factory=Actor)
    key_name: str | None = None
    key_id: str | None = None
    version: int | None = None
    reason: str | None = None
    digests: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    sequence: int | None = None
    cid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = self.time.isoformat()
        return data

    def stored(self, sequence: int, cid: str | None) -> AuditEntry:
        """A copy with its place in the log (as ``varied``, without its keyword dict)."""
        copy = object.__new__(AuditEntry)
        copy.__dict__.update(self.__dict__, sequence=sequence, cid=cid)
        return copy

    def varied(self, **changes: Any) -> AuditEntry:
        """A copy with ``changes`` (hot path: cheaper than ``dataclasses.replace``; the
        changes are trusted to be fields of the right types)."""
        copy = object.__new__(AuditEntry)
        copy.__dict__.update(self.__dict__, **changes)
        return copy


def digest(data: bytes) -> str:
    """A plain sha256 (hex) of public bytes.  Never for data a caller handled: an unkeyed
    hash of a short input is a brute-force away from it; the service keeps
    ``qkms.audit.mac`` HMAC digests of those."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class AuditSink(Protocol):
    async def append(self, entry: AuditEntry) -> AuditEntry:
        """Store the entry durably; return it with its sequence (and CID)."""
        ...

    async def append_many(self, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Store entries in order, made durable together (a batch's items)."""
        ...

    def recent(self, limit: int = 100) -> list[AuditEntry]: ...

    async def health(self) -> dict[str, Any]: ...


class MemoryAuditLog:
    """Keeps the newest ``capacity`` entries in memory; nothing survives a restart."""

    def __init__(self, capacity: int = 1_000) -> None:
        self._entries: deque[AuditEntry] = deque(maxlen=capacity)
        self._sequence = 0

    async def append(self, entry: AuditEntry) -> AuditEntry:
        self._sequence += 1
        stored = entry.stored(self._sequence, None)
        self._entries.append(stored)
        return stored

    async def append_many(self, entries: list[AuditEntry]) -> list[AuditEntry]:
        return [await self.append(entry) for entry in entries]

    def recent(self, limit: int = 100) -> list[AuditEntry]:
        return list(self._entries)[-limit:]

    async def health(self) -> dict[str, Any]:
        return {"status": "healthy", "sink": "memory", "entries": self._sequence}

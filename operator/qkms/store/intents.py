"""Intents: a new key version announced in the store before the provider makes it.

A process killed between the provider's write and the catalog's (or a provider call that
timed out after the provider acted) leaves a provider key or version that no record
names. Before every create, import and rotation the service writes an intent (sealed, in
the same store as the catalog, so a replica or a restarted pod finds it) naming the key,
the new version's key ID and, for a rotation, the version it replaces; the intent is
closed once the catalog names the version. An intent still open later is resolved by
:func:`resolution` and the service's sweep (``KeyManagementService.resolve_intents``).

A version cut short is never adopted: nothing can have used it (no record named it, so
no signature or ciphertext exists under it), and whatever asked for it asks again (a
schedule that is still due, a rotation request whose ID the record does not hold). So
the sweep destroys what the provider made, found by the name, tag or label the provider
gives every native key (the key ID), and audits it.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from qkms.model.keys import KeyRecord

from .sealed import SealedStore

KIND = "intents"


@dataclass(frozen=True)
class Intent:
    key_id: str  # the new version's
    key_name: str
    operation: str  # CREATE, IMPORT, ROTATE or MIGRATE
    algorithm: str
    at: datetime
    writer: str  # the service instance that wrote it
    previous: dict[str, Any] | None = None  # rotations: key_id, algorithm, ref of the old

    def encode(self) -> bytes:
        return json.dumps({**asdict(self), "at": self.at.isoformat()},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Intent:
        value = json.loads(data)
        return cls(**{**value, "at": datetime.fromisoformat(value["at"])})


class Resolution(StrEnum):
    COMMITTED = "committed"  # the catalog names the version: only the intent is left
    IN_FLIGHT = "in-flight"  # another writer may still be making it: not yet
    ORPHANED = "orphaned"  # cut short: destroy what the provider made


def resolution(intent: Intent, record: KeyRecord | None, now: datetime, *, writer: str,
               timeout_seconds: float) -> Resolution:
    """What to do with an open intent. This writer's own intents are resolved at once
    (the sweep holds the key's lock, so none of them is in flight); another writer's
    only once older than ``timeout_seconds``, longer than any provider call may take."""
    if record is not None and any(v.key_id == intent.key_id for v in record.versions):
        return Resolution.COMMITTED
    if intent.writer != writer and (now - intent.at).total_seconds() < timeout_seconds:
        return Resolution.IN_FLIGHT
    return Resolution.ORPHANED


class IntentLog:
    """The open intents of one environment's store."""

    def __init__(self, sealed: SealedStore) -> None:
        self.sealed = sealed

    def open(self, intent: Intent) -> None:
        self.sealed.put(KIND, intent.key_id, intent.encode())

    def is_open(self, key_id: str) -> bool:
        return self.sealed.get(KIND, key_id) is not None

    def close(self, key_id: str) -> None:
        self.sealed.delete(KIND, key_id)

    def pending(self) -> builtins.list[Intent]:
        found = []
        for key_id in self.sealed.list(KIND):
            data = self.sealed.get(KIND, key_id)
            if data is not None:
                found.append(Intent.decode(data))
        return sorted(found, key=lambda i: i.at)

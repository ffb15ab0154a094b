"""How many encryptions a random-nonce AEAD key version has made, counted durably.

AES-GCM (and ChaCha20-Poly1305) versions encrypt under random 96-bit nonces, and NIST
SP 800-38D allows at most 2^32 such encryptions per key before a nonce collision
becomes too likely.  qkms counts encryptions per version and rotates the key (an
audited SCHEDULED rotation) when ``Settings.aead_max_encryptions`` (2^30 by default)
is reached; at 2^32 it refuses to encrypt with that version at all.

Counting every encryption durably would cost a write each; instead a writer reserves
a block of encryptions (a lease) in a sealed record ``usage/<key_id>[~<writer>]``
before using it, so a crash or restart can only over-count, never under-count.  Each
writer (replica) keeps its own record; the count of a version is the sum of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from qkms.errors import KeyStateError

KIND = "usage"
NIST_LIMIT = 2**32
RANDOM_NONCE_AEADS = frozenset({"AES-256-GCM", "ChaCha20-Poly1305"})


@dataclass
class _Count:
    used: int  # this writer's encryptions (counted from its reservation after a restart)
    reserved: int  # what this writer's record allows before it must be written again
    others: int  # what the other writers had reserved when last read
    rotating: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def total(self) -> int:
        return self.used + self.others


class EncryptionBudget:
    def __init__(self, sealed: Any, limit: int, writer: str = "") -> None:
        """``writer``: ``Settings.audit_writer``, this process's share of the budget."""
        self.sealed = sealed
        self.limit = limit
        self.writer = writer
        self.lease = max(1, min(65_536, limit // 64))
        self._counts: dict[str, _Count] = {}

    @staticmethod
    def applies(algorithm: str) -> bool:
        return algorithm in RANDOM_NONCE_AEADS

    def _name(self, key_id: str) -> str:
        return f"{key_id}~{self.writer}" if self.writer else key_id

    def _read(self, key_id: str) -> tuple[int, int]:
        """(this writer's reservation, the other writers' reservations)."""
        own = others = 0
        for name in self.sealed.list(KIND):
            if name != key_id and not name.startswith(f"{key_id}~"):
                continue
            reserved = int((self.sealed.get_json(KIND, name) or {}).get("reserved", 0))
            if name == self._name(key_id):
                own = reserved
            else:
                others += reserved
        return own, others

    async def count(self, key_id: str) -> int:
        """Count one encryption by ``key_id`` before it is made; returns the version's total.
        Refuses (409) past the NIST limit, which a rotation should have prevented."""
        count = self._counts.get(key_id)
        if count is None:
            own, others = await asyncio.to_thread(self._read, key_id)
            count = self._counts.setdefault(key_id, _Count(own, own, others))
        if count.total >= NIST_LIMIT:
            raise KeyStateError(f"{key_id} has made {count.total} encryptions, the most "
                                "AES-GCM allows with random nonces; use the rotated key")
        count.used += 1
        if count.used > count.reserved:
            async with count.lock:
                if count.used > count.reserved:
                    own, others = await asyncio.to_thread(self._read, key_id)
                    count.others = others
                    reserved = max(count.used, own) - 1 + self.lease
                    await asyncio.to_thread(self.sealed.put_json, KIND, self._name(key_id),
                                            {"reserved": reserved})
                    count.reserved = reserved
        return count.total

    def due(self, key_id: str) -> bool:
        """Whether this version has reached the limit and no rotation was started for it."""
        count = self._counts.get(key_id)
        if count is None or count.rotating or count.total < self.limit:
            return False
        count.rotating = True
        return True

    def failed(self, key_id: str) -> None:
        """The rotation did not happen: try again at the next encryption."""
        count = self._counts.get(key_id)
        if count is not None:
            count.rotating = False

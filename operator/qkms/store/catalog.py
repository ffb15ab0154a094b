"""The key catalog: one sealed record per key name, indexed in memory.

Records are read once and kept in memory; writes go through to the sealed
store before the in-memory copy changes, so a crash never leaves memory ahead
of disk.  A corrupt record is reported by name and skipped; every other key
stays usable.

Each record is sealed with its generation (its ``revision``), and ``floors`` holds
the lowest generation each key's record may have: replayed from the audit chain
when the service starts (``audit.generations``), raised by every record written or
read since.  A record older than that was put back (a restored file, an old Secret)
and is refused as rolled back: the key is listed in ``rolled_back`` and ``corrupt``,
its uses answer 503 ``record_rollback``, and the newer state this process knew (a
revocation, say) stays in memory.  Revoking the key writes a newer generation and
ends the refusal; so does putting the newest record back.

With a ``feed`` (``store.changes``: a data dir's file, or what the Kubernetes store's
watch heard), every write is announced to the other processes over the same store, and
``follow`` re-reads what they wrote before a key is used.
"""

from __future__ import annotations

import logging
import time

from pydantic import ValidationError

from qkms.errors import RecordCorruptError, RecordRollbackError
from qkms.model.keys import KeyRecord

from .changes import ChangeSource
from .sealed import SealedStore

log = logging.getLogger("key-management:store")

KEYS = "keys"


def record_name(name: str) -> str:
    """Key names may hold one '/' (namespace/name); records may not."""
    return name.replace("/", "~")


def key_name(record: str) -> str:
    """The key a catalog record is named after (``record_name``'s inverse)."""
    return record.replace("~", "/")


class Catalog:
    def __init__(self, store: SealedStore, floors: dict[str, int] | None = None,
                 feed: ChangeSource | None = None) -> None:
        self.store = store
        self.feed = feed
        self.floors: dict[str, int] = dict(floors or {})
        self._by_name: dict[str, KeyRecord] = {}
        self._by_key_id: dict[str, str] = {}
        self._read_at: dict[str, float] = {}
        self.corrupt: dict[str, str] = {}
        self.rolled_back: dict[str, RecordRollbackError] = {}  # by key name

    def load(self) -> None:
        """(Re)read every record; corrupt ones are listed in ``corrupt``, rolled-back ones in
        ``rolled_back`` too (keeping any newer copy already in memory)."""
        by_name, corrupt = {}, {}
        rolled_back: dict[str, RecordRollbackError] = {}
        for rec in self.store.list(KEYS):
            try:
                record = self._read(rec)
            except RecordRollbackError as exc:
                log.error("%s", exc)
                corrupt[f"{KEYS}/{rec}"] = exc.message
                rolled_back[exc.key] = exc
                known = self._by_name.get(exc.key)
                if known is not None:
                    by_name[exc.key] = known
                continue
            except RecordCorruptError as exc:
                log.error("%s", exc)
                corrupt[f"{KEYS}/{rec}"] = exc.message
                continue
            if record is not None:
                by_name[record.name] = record
        self._by_name, self.corrupt, self.rolled_back = by_name, corrupt, rolled_back
        self._by_key_id = {v.key_id: r.name for r in by_name.values() for v in r.versions}
        for name, refusal in rolled_back.items():  # its version IDs lead to the refusal, not 404
            for key_id in refusal.key_ids:
                self._by_key_id.setdefault(key_id, name)

    def _read(self, rec: str) -> KeyRecord | None:
        found = self.store.get_generation(KEYS, rec)
        if found is None:
            return None
        data, generation = found
        try:
            record = KeyRecord.model_validate_json(data)
        except ValidationError as exc:
            raise RecordCorruptError(
                f"{KEYS}/{rec}", f"invalid content ({exc.error_count()} errors)") from None
        if record_name(record.name) != rec:
            raise RecordCorruptError(f"{KEYS}/{rec}", f"holds key {record.name!r}")
        if generation is not None and generation != record.revision:
            raise RecordCorruptError(f"{KEYS}/{rec}", f"sealed as generation {generation} "
                                                      f"but holds revision {record.revision}")
        floor = self.floors.get(record.name, 0)
        if record.revision < floor:
            refused = RecordRollbackError(f"{KEYS}/{rec}", record.name, record.revision, floor,
                                          [v.key_id for v in record.versions])
            refused.stale = record  # only a revocation may start from it
            raise refused
        self.floors[record.name] = record.revision
        if self.rolled_back.pop(record.name, None) is not None:
            log.warning("%s: the record is at generation %d again; no longer refused",
                        record.name, record.revision)
            self.corrupt.pop(f"{KEYS}/{rec}", None)
        return record

    def reload_one(self, name: str) -> KeyRecord | None:
        try:
            record = self._read(record_name(name))
        except RecordRollbackError as exc:
            self._refuse(exc)
            raise
        if record is not None:
            self._index(record)
        return record

    def _refuse(self, exc: RecordRollbackError) -> None:
        """Refuse the key's use until a newer generation is written or put back."""
        if exc.key not in self.rolled_back:
            log.error("%s", exc)
        self.rolled_back[exc.key] = exc
        self.corrupt[exc.record] = exc.message
        for key_id in exc.key_ids:
            self._by_key_id.setdefault(key_id, exc.key)

    def follow(self) -> None:
        """Re-read the records other processes wrote since the last call (one ``stat``
        when none did)."""
        if self.feed is None:
            return
        names = self.feed.poll()
        if names is None:
            self.load()
            return
        for name in dict.fromkeys(names):
            try:
                self.reload_one(name)
            except RecordRollbackError:
                pass  # refused (``rolled_back``); the newer copy stays in memory
            except RecordCorruptError as exc:
                log.error("%s", exc)

    def get(self, name: str) -> KeyRecord | None:
        return self._by_name.get(name)

    def get_fresh(self, name: str, ttl: float) -> KeyRecord | None:
        """The record, re-read if this copy is older than ``ttl`` seconds: another
        replica may have rotated or revoked it, and a revocation must not linger."""
        record = self._by_name.get(name)
        if record is not None and time.monotonic() - self._read_at.get(name, 0.0) > ttl:
            try:
                record = self.reload_one(name) or record
            except RecordRollbackError:
                pass  # refused (``rolled_back``); the newer copy stays in memory
            except RecordCorruptError as exc:
                log.error("%s", exc)
        return record

    def name_for_key_id(self, key_id: str) -> str | None:
        return self._by_key_id.get(key_id)

    def all(self) -> list[KeyRecord]:
        return list(self._by_name.values())

    def next_generation(self, record: KeyRecord) -> int:
        """The generation ``put`` will give this record (audited before it is written)."""
        return max(record.revision, self.floors.get(record.name, 0)) + 1

    def put(self, record: KeyRecord, *, new: bool = False) -> KeyRecord:
        """``new``: a key just made, written only if no other writer made it first."""
        record = record.model_copy(update={"revision": self.next_generation(record)})
        self.store.put(KEYS, record_name(record.name), record.model_dump_json().encode(),
                       generation=record.revision, new=new)
        if self.feed is not None:
            self.feed.note(record.name)
        self.floors[record.name] = record.revision
        if self.rolled_back.pop(record.name, None) is not None:
            self.corrupt.pop(f"{KEYS}/{record_name(record.name)}", None)
        self._index(record)
        return record

    def _index(self, record: KeyRecord) -> None:
        self._by_name[record.name] = record
        self._read_at[record.name] = time.monotonic()
        for version in record.versions:
            self._by_key_id[version.key_id] = record.name

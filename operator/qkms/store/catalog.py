"""The key catalog: one sealed record per key name, indexed in memory.

Records are read once and kept in memory; writes go through to the sealed
store before the in-memory copy changes, so a crash never leaves memory ahead
of disk.  A corrupt record is reported by name and skipped; every other key
stays usable.
"""

from __future__ import annotations

import logging
import time

from pydantic import ValidationError

from qkms.errors import RecordCorruptError
from qkms.model.keys import KeyRecord

from .sealed import SealedStore

log = logging.getLogger("key-management:store")

KEYS = "keys"


def record_name(name: str) -> str:
    """Key names may hold one '/' (namespace/name); records may not."""
    return name.replace("/", "~")


class Catalog:
    def __init__(self, store: SealedStore) -> None:
        self.store = store
        self._by_name: dict[str, KeyRecord] = {}
        self._by_key_id: dict[str, str] = {}
        self._read_at: dict[str, float] = {}
        self.corrupt: dict[str, str] = {}

    def load(self) -> None:
        """(Re)read every record; corrupt ones are listed in ``corrupt``."""
        by_name, corrupt = {}, {}
        for rec in self.store.list(KEYS):
            try:
                record = self._read(rec)
            except RecordCorruptError as exc:
                log.error("%s", exc)
                corrupt[f"{KEYS}/{rec}"] = exc.message
                continue
            if record is not None:
                by_name[record.name] = record
        self._by_name, self.corrupt = by_name, corrupt
        self._by_key_id = {v.key_id: r.name for r in by_name.values() for v in r.versions}

    def _read(self, rec: str) -> KeyRecord | None:
        data = self.store.get(KEYS, rec)
        if data is None:
            return None
        try:
            record = KeyRecord.model_validate_json(data)
        except ValidationError as exc:
            raise RecordCorruptError(
                f"{KEYS}/{rec}", f"invalid content ({exc.error_count()} errors)") from None
        if record_name(record.name) != rec:
            raise RecordCorruptError(f"{KEYS}/{rec}", f"holds key {record.name!r}")
        return record

    def reload_one(self, name: str) -> KeyRecord | None:
        record = self._read(record_name(name))
        if record is not None:
            self._index(record)
        return record

    def get(self, name: str) -> KeyRecord | None:
        return self._by_name.get(name)

    def get_fresh(self, name: str, ttl: float) -> KeyRecord | None:
        """The record, re-read if this copy is older than ``ttl`` seconds: another
        replica may have rotated or revoked it, and a revocation must not linger."""
        record = self._by_name.get(name)
        if record is not None and time.monotonic() - self._read_at.get(name, 0.0) > ttl:
            try:
                record = self.reload_one(name) or record
            except RecordCorruptError as exc:
                log.error("%s", exc)
        return record

    def name_for_key_id(self, key_id: str) -> str | None:
        return self._by_key_id.get(key_id)

    def all(self) -> list[KeyRecord]:
        return list(self._by_name.values())

    def put(self, record: KeyRecord) -> KeyRecord:
        record = record.model_copy(update={"revision": record.revision + 1})
        self.store.put(KEYS, record_name(record.name), record.model_dump_json().encode())
        self._index(record)
        return record

    def _index(self, record: KeyRecord) -> None:
        self._by_name[record.name] = record
        self._read_at[record.name] = time.monotonic()
        for version in record.versions:
            self._by_key_id[version.key_id] = record.name

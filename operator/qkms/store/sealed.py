"""A record store whose every record is sealed under the KEK.

The address ``kind/name`` is bound into each record, so the catalog and the
key material get integrity from one place.  ``rewrap`` re-seals every record
under a new KEK; it is restartable because ``Sealer`` opens both KEKs.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from typing import Any

from qkms.errors import RecordCorruptError, RecordExistsError, StorageError

from .kek import Sealer
from .records import RecordStore


class SealedStore:
    def __init__(self, records: RecordStore, sealer: Sealer) -> None:
        self.records = records
        self.sealer = sealer

    def get(self, kind: str, name: str) -> bytes | None:
        blob = self.records.get(kind, name)
        return None if blob is None else self.sealer.open(blob, f"{kind}/{name}")

    def get_generation(self, kind: str, name: str) -> tuple[bytes, int | None] | None:
        """The record and the generation sealed with it (None for a plain record)."""
        blob = self.records.get(kind, name)
        return None if blob is None else self.sealer.open_generation(blob, f"{kind}/{name}")

    def put(self, kind: str, name: str, plaintext: bytes, generation: int | None = None,
            *, new: bool = False) -> None:
        """``new``: only if no record is there yet (else :class:`RecordExistsError`)."""
        blob = self.sealer.seal(plaintext, f"{kind}/{name}", generation)
        try:
            if not new:
                self.records.put(kind, name, blob)
            elif not self.records.create(kind, name, blob):
                raise RecordExistsError(f"{kind}/{name}")
        except OSError as exc:  # the old record, if any, is untouched (atomic replace)
            raise StorageError(f"{kind}/{name}", exc.strerror or str(exc)) from exc

    def get_json(self, kind: str, name: str) -> dict[str, Any] | None:
        data = self.get(kind, name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise RecordCorruptError(f"{kind}/{name}", "not valid JSON") from None

    def put_json(self, kind: str, name: str, value: dict[str, Any]) -> None:
        self.put(kind, name, json.dumps(value, separators=(",", ":")).encode())

    def delete(self, kind: str, name: str) -> None:
        try:
            self.records.delete(kind, name)
        except OSError as exc:
            raise StorageError(f"{kind}/{name}", exc.strerror or str(exc)) from exc

    def list(self, kind: str) -> list[str]:
        return self.records.list(kind)

    def rewrap(self, kinds: builtins.list[str]) -> Iterator[str]:  # `list`: the method above
        """Re-seal every record of ``kinds`` under the current KEK; yields each address."""
        for kind in kinds:
            for name in self.records.list(kind):
                blob = self.records.get(kind, name)
                if blob is None or self.sealer.is_current(blob):
                    continue
                self.put(kind, name, *self.sealer.open_generation(blob, f"{kind}/{name}"))
                yield f"{kind}/{name}"

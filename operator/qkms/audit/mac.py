"""The audit MAC key: entries keep HMAC-SHA256 digests of the data handled, not hashes.

A plain ``sha256(input)`` in a log lets anyone who reads the log test guesses (a
4-digit PIN falls in 10,000 tries).  As Vault's audit devices do, qkms keys the
digest: ``hmac-sha256:<mac id>:<hex>``, under a per-environment MAC key kept
sealed in that environment's store (record ``audit/mac-keys``), never in the log.
Only someone holding the store and its master key can compute a digest, which is
what ``qkms audit search --input FILE`` does to find the entries of a known input.

The key is rotated every ``rotation`` (default 90 days) by whoever runs the
environment's housekeeping (``KeyManagementService.prune_audit``).  A retired key
is kept as long as entries it digested may be retained (the audit retention period
after it stopped being used), so search keeps working over the whole retained log;
then it is dropped, with the entries it covered.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

log = logging.getLogger("key-management:audit")

KIND, NAME = "audit", "mac-keys"
PREFIX = "hmac-sha256:"
DEFAULT_ROTATION = timedelta(days=90)


@dataclass(frozen=True)
class MacKey:
    id: str
    key: bytes
    created: datetime
    retired: datetime | None = None

    def digest(self, data: bytes) -> str:
        mac = self._keyed.copy()
        mac.update(data)
        return f"{PREFIX}{self.id}:{mac.hexdigest()}"

    @cached_property
    def _keyed(self) -> hmac.HMAC:
        """HMAC-SHA256 with the key already absorbed: each digest copies it instead of
        keying afresh (the hot path digests every operation's data)."""
        return hmac.new(self.key, digestmod="sha256")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "key": base64.b64encode(self.key).decode(),
                "created": self.created.isoformat(),
                "retired": self.retired.isoformat() if self.retired else None}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MacKey:
        return cls(str(value["id"]), base64.b64decode(value["key"]),
                   datetime.fromisoformat(value["created"]),
                   datetime.fromisoformat(value["retired"]) if value.get("retired") else None)


class AuditMac:
    """The environment's MAC keyring, read from (and written to) its sealed store."""

    def __init__(self, sealed: Any, clock: Any = None,
                 rotation: timedelta = DEFAULT_ROTATION) -> None:
        self.sealed = sealed
        self.clock = clock or (lambda: datetime.now(UTC))
        self.rotation = rotation
        self._keys: list[MacKey] | None = None
        self._read_at = 0.0

    # -- the keyring -------------------------------------------------------------------
    def keys(self) -> list[MacKey]:
        if self._keys is None:
            self._keys = self._read()
            self._read_at = time.monotonic()
        return self._keys

    def _read(self) -> list[MacKey]:
        stored = self.sealed.get_json(KIND, NAME)
        return [MacKey.from_json(k) for k in (stored or {}).get("keys", [])]

    def _write(self, keys: list[MacKey]) -> None:
        self.sealed.put_json(KIND, NAME, {"keys": [k.to_json() for k in keys]})
        self._keys = keys

    def current(self) -> MacKey:
        keys = self.keys()
        if keys and keys[-1].retired is None:
            newest = keys[-1]
            # Another replica may have rotated it: look again now and then once it is due.
            if (self.clock() - newest.created >= self.rotation
                    and time.monotonic() - self._read_at > 60):
                self._keys, self._read_at = None, time.monotonic()
                return self.current()
            return newest
        fresh = self._read()  # first use: another process may have made it meanwhile
        if fresh and fresh[-1].retired is None:
            self._keys = fresh
            return fresh[-1]
        key = MacKey(secrets.token_hex(4), secrets.token_bytes(32), self.clock())
        self._write([*fresh, key])
        log.debug("audit: new MAC key %s for entry digests", key.id)
        return key

    def digest(self, data: bytes) -> str:
        return self.current().digest(data)

    def candidates(self, data: bytes) -> set[str]:
        """What an entry's digest of ``data`` is under any key still kept (for search)."""
        return {key.digest(data) for key in self.keys()}

    # -- housekeeping ------------------------------------------------------------------
    def maintain(self, retention: timedelta) -> list[str]:
        """Rotate the current key when due; drop retired keys whose entries have all passed
        the retention period.  Returns what was done, for the log."""
        now = self.clock()
        keys = self._read()
        done = []
        if keys and keys[-1].retired is None and now - keys[-1].created >= self.rotation:
            keys = [*keys[:-1], MacKey(keys[-1].id, keys[-1].key, keys[-1].created, now),
                    MacKey(secrets.token_hex(4), secrets.token_bytes(32), now)]
            done.append(f"rotated to {keys[-1].id}")
        kept = [k for k in keys if k.retired is None or now - k.retired < retention]
        done += [f"dropped {k.id}" for k in keys if k not in kept]
        if done:
            self._write(kept)
        else:
            self._keys = keys
        return done


def keyring_near(audit_folder: Path, kek_file: Path | None = None) -> AuditMac:
    """The MAC keyring of the store beside an audit folder (``<env>/audit[/<writer>]`` next
    to ``<env>/store``), opened read-only with its master key (found near it if not given)."""
    from qkms.errors import InvalidInputError
    from qkms.store.kek import Sealer, load_or_create_kek
    from qkms.store.layout import find_kek, sealed_under
    from qkms.store.records import SUFFIX, FileRecordStore
    from qkms.store.sealed import SealedStore

    folder = audit_folder.resolve()
    store = next((p / "store" for p in (folder.parent, folder.parent.parent)
                  if (p / "store" / KIND / f"{NAME}{SUFFIX}").is_file()), None)
    if store is None:
        raise InvalidInputError("--input", f"no audit MAC keys in a store beside {audit_folder}"
                                           " (entries of this log hold no keyed digests)")
    if kek_file is None:
        wanted = sealed_under(store / KIND / f"{NAME}{SUFFIX}")
        kek_file = find_kek(wanted, [store]) if wanted else None
    if kek_file is None or not kek_file.is_file():
        raise InvalidInputError("--master-key-file", f"the master key of {store} was not found "
                                                     "near it: give it with --master-key-file")
    return AuditMac(SealedStore(FileRecordStore(store), Sealer(load_or_create_kek(kek_file))))

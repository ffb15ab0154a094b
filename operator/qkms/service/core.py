"""The service's wiring and lookups: the store, catalog, provider and audit trail built
from Settings (the factory), and finding keys by name or key ID."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qkms import lifecycle
from qkms.aead_budget import EncryptionBudget
from qkms.audit.chain import AuditChain, shared_chain
from qkms.audit.entry import AuditEntry, AuditSink, MemoryAuditLog
from qkms.audit.generations import floors as generation_floors
from qkms.audit.mac import AuditMac
from qkms.config import Settings
from qkms.crypto import suite_for, verify_signature
from qkms.crypto.base import PublicKey
from qkms.errors import (
    AuditStorageError,
    EnvironmentMismatchError,
    KeyNotFoundError,
    OperationNotAllowedError,
    PQCDisabledError,
)
from qkms.events import EventBus
from qkms.model.algorithms import AlgorithmInfo, check_usage, resolve_algorithm
from qkms.model.enums import Usage, VersionState
from qkms.model.keys import KeyMetadata, KeyRecord, KeyVersion
from qkms.providers import build_provider
from qkms.providers.base import KeyHandle, Provider
from qkms.providers.software import MATERIAL, in_batch
from qkms.store.catalog import Catalog
from qkms.store.changes import ChangeFeed
from qkms.store.intents import IntentLog
from qkms.store.kek import Sealer, load_or_create_kek
from qkms.store.layout import check_kek
from qkms.store.records import FileRecordStore, RecordStore
from qkms.store.sealed import SealedStore

from .inputs import (
    AUDIT_KEY,
    KEY_ID_RE,
    SYSTEM_LABEL,
)

log = logging.getLogger("key-management:service")


def audit_folder(data_dir: Path, writer: str = "") -> Path:
    """One chain per writer: ``Settings.audit_writer`` (``QKMS_AUDIT_WRITER``, the pod name
    in a cluster) gives each replica its own log, so replicas never contend for one; "",
    the data dir's own."""
    return data_dir / "audit" / writer if writer else data_dir / "audit"


class ServiceCore:
    """The wiring (built from Settings) and the lookups every layer above uses."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        records: RecordStore | None = None,
        provider: Provider | None = None,
        audit: AuditSink | None = None,
        clock: Any = None,
        kek: bytes | None = None,
    ) -> None:
        """``kek`` comes from a Kubernetes Secret in a cluster; otherwise from the KEK file."""
        self.settings = settings or Settings.from_env().scoped()  # the CLI's layout
        self.environment = self.settings.environment
        kek_path = self.settings.kek_path
        if records is None and kek is None:  # never a new KEK beside sealed records, or a wrong one
            check_kek(kek_path, self.settings.data_dir / "store")
        older = [load_or_create_kek(p) for p in (kek_path.with_suffix(".old"),) if p.exists()]
        self.sealed = SealedStore(records or FileRecordStore(self.settings.data_dir / "store"),
                                  Sealer(kek or load_or_create_kek(kek_path), *older))
        # Each key's latest generation, replayed from the audit chain: an older record is
        # refused as rolled back (``store.catalog``, ``audit.generations``).
        chain_root = (audit.root if isinstance(audit, AuditChain)
                      else audit_folder(self.settings.data_dir, self.settings.audit_writer)
                      if audit is None and self.settings.audit_enabled else None)
        # Other processes' writes: the data dir's feed file, or what the store hears itself
        # (the Kubernetes store's watch: ``changes``, a ``store.changes.Notices``).
        feed = ChangeFeed(self.settings.data_dir / "store") if records is None else \
            getattr(records, "changes", None)
        self.catalog = Catalog(self.sealed, generation_floors(chain_root) if chain_root else {},
                               feed)
        self.catalog.load()
        self.intents = IntentLog(self.sealed)
        self.writer = secrets.token_hex(8)  # names this instance's intents
        self._rollbacks_audited: set[tuple[str, int, int]] = set()
        self.budget = EncryptionBudget(self.sealed, self.settings.aead_max_encryptions,
                                       self.settings.audit_writer)
        self._background: set[asyncio.Task[None]] = set()
        self.audit_mac = AuditMac(self.sealed, clock=lambda: self.clock(),
                                  rotation=self.settings.audit_mac_rotation)
        self.provider: Provider = provider or build_provider(self.settings, self.sealed)
        self.events = EventBus()
        self._joined = False  # another service of this process owns the open chain
        if audit is None and self.settings.audit_enabled:
            audit = shared_chain(audit_folder(self.settings.data_dir,
                                              self.settings.audit_writer),
                                 signer=self._sign_checkpoint, check=verify_signature,
                                 **self.settings.audit.chain_arguments())
            self._joined = audit.users > 1
        self.audit: AuditSink = MemoryAuditLog() if audit is None else audit
        audit = self.audit
        self._sink_delivers = hasattr(audit, "listen")
        if isinstance(audit, AuditChain) and not self._joined:
            audit.attach(self._sign_checkpoint, self._deliver)
        elif self._sink_delivers:
            audit.listen(self._deliver)  # type: ignore[attr-defined]
        self._audit_key_checked = not isinstance(audit, AuditChain)
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._locks: dict[str, asyncio.Lock] = {}
        self._public: dict[str, PublicKey] = {}
        self._last_reload = 0.0
        self.last_audit: dict[str, AuditEntry] = {}  # newest entry per key name, for Events
        self.counters: dict[str, Counter[str]] = {
            "operations": Counter(), "rotations": Counter(), "failures": Counter(),
            "created": Counter(),
        }

    def on(self, event: str, callback: Any) -> None:
        self.events.on(event, callback)

    def _resolve(self, ref: Any, *, change: str | None = None
                 ) -> tuple[KeyRecord, KeyVersion | None]:
        """Find a key by name or version key ID, refusing other environments.

        A key whose stored record was rolled back is refused (503 ``record_rollback``) for
        use.  ``change`` (the mutation asked for) may go ahead from the newer state this
        process still holds, which writes a newer generation and so ends the refusal;
        without one, only a revocation may start from the rolled-back record."""
        text = str(ref).strip()
        match = KEY_ID_RE.fullmatch(text)
        if match and match["env"] != self.environment.value:
            raise EnvironmentMismatchError(text, match["env"], self.environment.value)
        record = self._lookup(text, by_key_id=bool(match))
        name = self.catalog.name_for_key_id(text) if match else text
        refused = self.catalog.rolled_back.get(name) if name else None
        if refused is not None:
            newer = record is not None and record.revision >= refused.expected
            if change is None or not (newer or change == "REVOKE"):
                raise refused
            record = record if newer else refused.stale  # type: ignore[assignment]
        if record is None:
            raise KeyNotFoundError(text)
        if record.environment is not self.environment:
            raise EnvironmentMismatchError(text, record.environment.value, self.environment.value)
        return record, (lifecycle.find_version(record, text) if match else None)

    def _generation(self, record: KeyRecord) -> dict[str, str]:
        """The generation the catalog will write ``record`` as: audited (before the write) so
        that the chain remembers each key's latest record (``audit.generations``)."""
        return {"generation": str(self.catalog.next_generation(record))}

    def _current(self, record: KeyRecord) -> KeyRecord:
        """The catalog's copy of a resolved record (it may have changed while waiting for
        the key's lock); the resolved one itself if it is the rolled-back record."""
        known = self.catalog.get(record.name)
        return known if known is not None and known.revision >= record.revision else record

    def _lookup(self, text: str, *, by_key_id: bool) -> KeyRecord | None:
        if not in_batch():  # a batch follows once, at its start (``precheck``)
            self.catalog.follow()  # what another process (a worker, the CLI) wrote: at once
        name = self.catalog.name_for_key_id(text) if by_key_id else text
        record = self.catalog.get_fresh(name, self.settings.catalog_ttl) if name else None
        if record is None and time.monotonic() - self._last_reload > 1.0:
            # Another process (a replica, the CLI) may have created it: reread, at most 1/s.
            self._last_reload = time.monotonic()
            self.catalog.load()
            name = self.catalog.name_for_key_id(text) if by_key_id else text
            record = self.catalog.get(name) if name else None
        return record

    def _public_key(self, version: KeyVersion) -> PublicKey:
        cached = self._public.get(version.key_id)
        if cached is None:
            if version.public_key is None:
                raise OperationNotAllowedError(f"{version.key_id} has no public key")
            cached = suite_for(version.algorithm).load_public(version.public_key)
            self._public[version.key_id] = cached
        return cached

    def public_pem(self, version: KeyVersion) -> str | None:
        if version.public_key is None or version.state is VersionState.DESTROYED:
            return None
        return self._public_key(version).pem()

    def _metadata(self, record: KeyRecord, version: KeyVersion) -> KeyMetadata:
        pem = self.public_pem(version)
        return KeyMetadata(
            key_id=version.key_id, name=record.name, version=version.version,
            algorithm=version.algorithm, usage=record.usage, environment=record.environment,
            provider=version.provider, state=version.state, owner=record.owner,
            created_at=version.created_at, rotation_schedule=record.rotation_schedule,
            next_rotation=lifecycle.next_rotation(record), grace_until=version.grace_until,
            public_key=version.public_key, public_key_pem=pem,
            provider_mode=version.provider_ref.get("mode"),
        )

    async def get_key(self, key_id: str) -> KeyMetadata:
        record, version = self._resolve(key_id)
        return self._metadata(record, version or lifecycle.active_version(record) or record.current)

    def get_record(self, key_id: str) -> KeyRecord:
        return self._resolve(key_id)[0]

    async def list_keys(self) -> list[KeyMetadata]:
        return [self._metadata(r, lifecycle.active_version(r) or r.current)
                for r in self.user_records()]

    def jwks(self, key_id: str) -> dict[str, Any]:
        """Public JWKs of every version that may still verify (active and grace)."""
        record, _ = self._resolve(key_id)
        keys = []
        for version in lifecycle.verifying_versions(record, self.clock()):
            if version.public_key is not None:
                jwk = self._public_key(version).jwk(version.key_id)
                if jwk is not None:
                    keys.append(jwk)
        return {"keys": keys}

    def _check_algorithm(self, algorithm: Any, usage: Usage) -> AlgorithmInfo:
        info = resolve_algorithm(algorithm)
        check_usage(info, usage)
        if (info.post_quantum or info.hybrid) and not self.settings.pqc_enabled:
            raise PQCDisabledError(
                "algorithm", f"{info.name} is post-quantum and PQC is disabled by policy")
        return info

    def _new_key_id(self) -> str:
        return f"key_{self.environment.value}_{secrets.token_hex(8)}"

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _handle(self, version: KeyVersion) -> KeyHandle:
        return KeyHandle(version.key_id, resolve_algorithm(version.algorithm), version.provider_ref)

    async def _deliver(self, entry: AuditEntry) -> None:
        """Every stored entry, in chain order: remember it for Events, then announce it."""
        if entry.key_name:
            self.last_audit[entry.key_name] = entry
        await self.events.emit("auditEvent", entry)

    async def _sign_checkpoint(self, body: bytes) -> tuple[bytes, str, bytes]:
        record = self.catalog.get(AUDIT_KEY)
        version = lifecycle.active_version(record) if record else None
        if version is None or version.public_key is None:
            raise AuditStorageError("the audit checkpoint key is missing or not active")
        return await self.provider.sign(self._handle(version), body), version.key_id, \
            version.public_key

    def audit_public_key(self) -> bytes | None:
        """The checkpoint key's public key (what verifiers pin), once it exists."""
        record = self.catalog.get(AUDIT_KEY)
        version = lifecycle.active_version(record) if record else None
        return version.public_key if version else None

    # -- reading the catalog: what callers see, instead of reaching into it ----------
    def record_of(self, name: str) -> KeyRecord | None:
        return self.catalog.get(name)

    def records(self) -> list[KeyRecord]:
        """Every record this service holds, qkms's own included."""
        return self.catalog.all()

    def name_of_key_id(self, key_id: str) -> str | None:
        return self.catalog.name_for_key_id(key_id)

    def last_audit_of(self, name: str) -> AuditEntry | None:
        """The newest audit entry about the key (for Events and status)."""
        return self.last_audit.get(name)

    def store_problems(self) -> list[str]:
        """What is wrong with the stored records: corrupt ones, and ones rolled back."""
        rolled_back = self.catalog.rolled_back
        corrupt = sorted(r for r in self.catalog.corrupt
                         if r not in {e.record for e in rolled_back.values()})
        problems = [f"rolled back: {name} (generation {exc.found}, the audit chain says "
                    f"{exc.expected} or later)" for name, exc in sorted(rolled_back.items())]
        return ([f"corrupt records: {', '.join(corrupt)}"] if corrupt else []) + problems

    def describe_store(self) -> str:
        return self.sealed.records.describe()

    # -- whole records, for backups -----------------------------------------------
    def export_records(self) -> tuple[list[KeyRecord], dict[str, Any]]:
        """This environment's records, and the stored (sealed-at-rest, wrapped) material of
        each version that has some; native versions have none here."""
        records = [r for r in self.catalog.all() if r.environment is self.environment]
        material = {}
        for version in (v for r in records for v in r.versions):
            stored = self.sealed.get_json(MATERIAL, version.key_id)
            if stored is not None:
                material[version.key_id] = stored
        return records, material

    def restore_records(self, records: list[KeyRecord], material: dict[str, Any]) -> None:
        """Write a backup's material and records into this (empty) store; each record at a
        generation above any the audit chain remembers."""
        for key_id, stored in material.items():
            self.sealed.put_json(MATERIAL, key_id, stored)
        for record in records:
            self.catalog.put(record)
        self.catalog.load()

    def user_records(self) -> list[KeyRecord]:
        """This environment's keys, without qkms's own (the audit checkpoint key)."""
        return [r for r in self.catalog.all()
                if r.environment is self.environment and SYSTEM_LABEL not in r.labels]

"""KeyManagementService: the seed's API, tying provider, lifecycle, catalog and audit.

Every decision is delegated to ``lifecycle`` and ``model.algorithms`` (pure);
this class orders the I/O: provider first, then the audit entry, then the
catalog, so a failure at any step leaves no half-made key visible (at worst
an orphaned, unreferenced provider record).  Mutations of one key are
serialized by a per-key lock; ``use_key`` reads an immutable snapshot and
takes no lock.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from qkms import lifecycle
from qkms.aead_budget import EncryptionBudget
from qkms.audit.chain import AuditChain, shared_chain
from qkms.audit.chain import options_from_env as chain_options_from_env
from qkms.audit.entry import Actor, AuditEntry, AuditSink, MemoryAuditLog
from qkms.audit.generations import floors as generation_floors
from qkms.audit.mac import AuditMac, parse_rotation
from qkms.config import Settings
from qkms.crypto import suite_for
from qkms.crypto.base import InvalidCiphertext, PublicKey
from qkms.errors import (
    AuditStorageError,
    DecryptionError,
    EnvironmentMismatchError,
    Forbidden,
    InvalidInputError,
    KeyNotFoundError,
    KeyStateError,
    OperationNotAllowedError,
    PQCDisabledError,
    ProviderUnavailableError,
    QkmsError,
    RecordExistsError,
    RecordRollbackError,
    RotationFailedError,
    StorageError,
    Unauthenticated,
)
from qkms.events import EventBus
from qkms.issuer.ca import certified_spki
from qkms.model import durations
from qkms.model.algorithms import AlgorithmInfo, check_operation, check_usage, resolve_algorithm
from qkms.model.enums import Operation, RotationReason, Usage, VersionState
from qkms.model.keys import KeyMetadata, KeyRecord, KeyVersion
from qkms.model.schedules import effective_grace_period
from qkms.providers import build_provider
from qkms.providers.base import CreatedKey, KeyHandle, Provider
from qkms.providers.software import in_batch
from qkms.signing import NO_OPTIONS, SignOptions
from qkms.signing import sign as sign_with_options
from qkms.signing import verify as verify_with_options
from qkms.store.catalog import Catalog
from qkms.store.changes import ChangeFeed
from qkms.store.intents import Intent, IntentLog, Resolution, resolution
from qkms.store.layout import check_kek
from qkms.store.records import FileRecordStore, RecordStore
from qkms.store.sealed import SealedStore
from qkms.store.sealing import Sealer, load_or_create_kek

log = logging.getLogger("key-management:service")

KEY_ID_RE = re.compile(r"^key_(?P<env>[a-z]+)_(?P<id>[0-9a-f]{16,64})$")
_LABEL = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
NAME_RE = re.compile(rf"^{_LABEL}(/{_LABEL})?$")
AUDIT_KEY = "qkms-system/audit-checkpoint"
SYSTEM_LABEL = "qkms.io/system"
TOKEN_PREFIX = "qkms:v1:"  # noqa: S105 - a format marker, not a credential
MAX_DERIVE_LENGTH = 255 * 32
MAX_AUDITED_NAME = 320  # what a refusal records of a name or reason, whatever was sent
MAX_AUDITED_REASON = 512
E = TypeVar("E")


@dataclass(frozen=True)
class OperationResult:
    """The result of ``use_key``; secret outputs are kept out of ``repr``."""

    operation: str
    key_id: str
    name: str
    version: int
    algorithm: str
    signature: bytes | None = None
    ciphertext: str | bytes | None = None  # ENCRYPT: token; ENCAPSULATE: KEM ciphertext
    plaintext: bytes | None = field(default=None, repr=False)
    shared_secret: bytes | None = field(default=None, repr=False)
    derived_key: bytes | None = field(default=None, repr=False)
    recovery_id: int | None = None  # SIGN with recovery_id (ECDSA-secp256k1): 0 or 1


@dataclass(frozen=True)
class RotationResult:
    name: str
    old_key_id: str
    new_key_id: str
    reason: str
    version: int
    algorithm: str
    old_state: str
    grace_until: datetime | None = None
    replayed: bool = False


def _enum(kind: type[E], value: Any, field_name: str) -> E:
    try:
        return kind(str(value).strip().upper())  # type: ignore[call-arg]
    except ValueError:
        allowed = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
        raise InvalidInputError(field_name, f"{value!r} is not one of {allowed}") from None


def _bytes(value: Any, field_name: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise InvalidInputError(field_name, f"must be bytes or str, not {type(value).__name__}")


def _context(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return _bytes(value, "context")


def make_token(key_id: str, body: bytes) -> str:
    return TOKEN_PREFIX + key_id + ":" + base64.urlsafe_b64encode(body).rstrip(b"=").decode()


def parse_token(token: Any) -> tuple[str, bytes]:
    """Split an ENCRYPT token into (key ID, body); refuse anything malformed."""
    if isinstance(token, OperationResult):
        token = token.ciphertext
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else str(token)
    if not text.startswith(TOKEN_PREFIX) or text.count(":") != 3:
        raise InvalidInputError("data", "not a qkms ciphertext token (qkms:v1:<key_id>:<data>)")
    key_id, body = text[len(TOKEN_PREFIX):].split(":")
    try:
        return key_id, base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise InvalidInputError("data", "ciphertext token is not valid base64url") from None


def token_aad(key_id: str, context: bytes) -> bytes:
    """Bind the version and the caller's context into the AEAD."""
    return TOKEN_PREFIX.encode() + key_id.encode() + b"\x00" + context


def audit_folder(data_dir: Path) -> Path:
    """One chain per writer: ``QKMS_AUDIT_WRITER`` (the pod name in a cluster) gives each
    replica its own log, so replicas never contend for one; unset, the data dir's own."""
    writer = os.environ.get("QKMS_AUDIT_WRITER", "").strip()
    return data_dir / "audit" / writer if writer else data_dir / "audit"


class KeyManagementService:
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
                      else audit_folder(self.settings.data_dir)
                      if audit is None and self.settings.audit_enabled else None)
        feed = ChangeFeed(self.settings.data_dir / "store") if records is None else None
        self.catalog = Catalog(self.sealed, generation_floors(chain_root) if chain_root else {},
                               feed)
        self.catalog.load()
        self.intents = IntentLog(self.sealed)
        self.writer = secrets.token_hex(8)  # names this instance's intents
        self._rollbacks_audited: set[tuple[str, int, int]] = set()
        self.budget = EncryptionBudget(self.sealed, self.settings.aead_max_encryptions)
        self._background: set[asyncio.Task[None]] = set()
        self.audit_mac = AuditMac(self.sealed, clock=lambda: self.clock(),
                                  rotation=parse_rotation(os.environ.get(
                                      "QKMS_AUDIT_MAC_ROTATION")))
        self.provider: Provider = provider or build_provider(self.settings, self.sealed)
        self.events = EventBus()
        self._joined = False  # another service of this process owns the open chain
        if audit is None and self.settings.audit_enabled:
            audit = shared_chain(audit_folder(self.settings.data_dir),
                                 signer=self._sign_checkpoint, **chain_options_from_env())
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

    # -- events --------------------------------------------------------------
    def on(self, event: str, callback: Any) -> None:
        self.events.on(event, callback)

    # -- lookups -------------------------------------------------------------
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

    # -- creation ------------------------------------------------------------
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

    async def create_key(
        self,
        *,
        usage: Any,
        algorithm: Any,
        owner: str,
        rotation_schedule: str | None = None,
        grace_period: str | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        actor: Any = None,
    ) -> KeyMetadata:
        return await self._new_key("CREATE", usage, algorithm, owner, rotation_schedule,
                                   grace_period, name, labels, actor, None)

    async def import_key(
        self,
        *,
        private: bytes,
        usage: Any,
        algorithm: Any,
        owner: str,
        rotation_schedule: str | None = None,
        grace_period: str | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        actor: Any = None,
    ) -> KeyMetadata:
        """Bring your own key (``crypto.importing`` gives the stored form): natively where
        the provider can import it, by envelope otherwise; audited as IMPORT."""
        return await self._new_key("IMPORT", usage, algorithm, owner, rotation_schedule,
                                   grace_period, name, labels, actor, private)

    async def _new_key(self, operation: str, usage: Any, algorithm: Any, owner: Any,
                       rotation_schedule: str | None, grace_period: str | None,
                       name: str | None, labels: dict[str, str] | None, actor: Any,
                       private: bytes | None) -> KeyMetadata:
        actor = Actor.parse(actor)
        try:
            usage_enum = _enum(Usage, usage, "usage")
            info = self._check_algorithm(algorithm, usage_enum)
            owner = self._check_owner(owner)
            schedule = rotation_schedule or lifecycle.DEFAULT_ROTATION[usage_enum.value]
            durations.parse_duration(schedule, "rotation_schedule")
            grace = effective_grace_period(schedule, grace_period)
            lifecycle.validate_schedule(schedule, grace)
            key_id = self._new_key_id()
            name = self._check_name(name, owner, usage_enum, key_id)
            if private is not None:  # refuse material that does not load, before storing it
                try:
                    suite_for(info).load_private(private)
                except (ValueError, InvalidCiphertext):
                    raise InvalidInputError("private", f"not a valid {info.name} key") from None
        except QkmsError as exc:
            await self._record_failure(operation, exc, actor, name=name)
            raise
        async with self._lock(name):
            if name in self.catalog.rolled_back:  # never a new key over a refused one
                refusal = self.catalog.rolled_back[name]
                await self._record_failure(operation, refusal, actor, name=name)
                raise refusal
            if self.catalog.get(name) is not None:
                taken = InvalidInputError("name", f"a key named {name!r} already exists")
                await self._record_failure(operation, taken, actor, name=name)
                raise taken
            try:
                await self._announce(operation, name, key_id, info, None)
                created = await (self.provider.create(key_id, info) if private is None
                                 else self.provider.import_key(key_id, info, private))
            except QkmsError as exc:
                await self._record_failure(operation, exc, actor, name=name)
                raise
            now = self.clock()
            version = self._version(key_id, 1, info, created, now)
            record = KeyRecord(
                name=name, environment=self.environment, usage=usage_enum, owner=owner,
                rotation_schedule=schedule, grace_period=grace, provider=self.provider.type,
                created_at=now, last_rotated_at=now, versions=[version], labels=labels or {},
            )
            await self._record(operation, "success", actor, record, version,
                               details={"algorithm": info.name, "mode": created.mode.value,
                                        "owner": owner, "usage": usage_enum.value,
                                        "rotation_schedule": schedule,
                                        **self._generation(record)})
            record = await self._commit(operation, record, version, actor)
        self.counters["created"][info.name] += 1
        metadata = self._metadata(record, version)
        if SYSTEM_LABEL not in record.labels:  # qkms's own keys are audited, not announced
            await self.events.emit("keyCreated", metadata)
        return metadata

    def _version(self, key_id: str, number: int, info: AlgorithmInfo, created: CreatedKey,
                 now: datetime) -> KeyVersion:
        return KeyVersion(key_id=key_id, version=number, algorithm=info.name, created_at=now,
                          changed_at=now, provider=self.provider.type,
                          provider_ref={**created.ref, "mode": created.mode.value},
                          public_key=created.public_key)

    async def _commit(self, operation: str, record: KeyRecord, version: KeyVersion,
                      actor: Actor) -> KeyRecord:
        """Write the catalog after the audit entry that announced ``version``. If the store
        refuses, the chain says so (an error entry naming the same version) and the
        provider's copy, never committed and so never used, is removed where it can be."""
        try:
            committed = await asyncio.to_thread(functools.partial(
                self.catalog.put, record, new=operation in ("CREATE", "IMPORT")))
        except StorageError as exc:
            await self._record_failure(operation, exc, actor, record=record, version=version)
            exc.audited = True  # type: ignore[attr-defined]
            try:
                await self.provider.destroy(self._handle(version))
            except (QkmsError, OSError) as cleanup:
                log.warning("%s: could not remove the uncommitted %s from the provider: %s",
                            record.name, version.key_id, cleanup)
            else:
                await self._settle(version.key_id)
            raise
        await self._settle(version.key_id)
        return committed

    async def _announce(self, operation: str, name: str, key_id: str, info: AlgorithmInfo,
                        previous: KeyVersion | None) -> None:
        """The intent (store/intents.py) before the provider makes ``key_id``: a crash or
        a timeout after the provider acted leaves it open for ``resolve_intents``."""
        before = None if previous is None else {
            "key_id": previous.key_id, "algorithm": previous.algorithm,
            "ref": previous.provider_ref}
        await asyncio.to_thread(self.intents.open, Intent(
            key_id, name, operation, info.name, self.clock(), self.writer, before))

    async def _settle(self, key_id: str) -> None:
        """Close the intent; if the store refuses now, the next sweep finds it committed."""
        try:
            await asyncio.to_thread(self.intents.close, key_id)
        except StorageError as exc:
            log.warning("intent %s stays open until the next sweep: %s", key_id, exc)

    async def resolve_intents(self) -> dict[str, str]:
        """Resolve every open intent (store/intents.py): close those the catalog names, and
        destroy (and audit, as SWEEP) what a cut-short create or rotation left in the
        provider. Another process's intent waits ``settings.intent_timeout``. Returns
        the key ID and outcome of each intent resolved; a provider that fails keeps it open
        for the next sweep."""
        outcomes: dict[str, str] = {}
        pending = await asyncio.to_thread(self.intents.pending)
        now = self.clock()
        # A key another writer may be changing now: its provider key may grow meanwhile.
        busy = {i.key_name for i in pending if resolution(
            i, None, now, writer=self.writer, timeout_seconds=self.settings.intent_timeout)
            is Resolution.IN_FLIGHT}
        for intent in pending:
            async with self._lock(intent.key_name):
                try:
                    record = await asyncio.to_thread(self.catalog.reload_one, intent.key_name)
                except QkmsError:
                    continue  # a refused record: resolved once the refusal is
                decided = resolution(intent, record, self.clock(), writer=self.writer,
                                     timeout_seconds=self.settings.intent_timeout)
                if decided is Resolution.IN_FLIGHT or (
                        decided is Resolution.ORPHANED and intent.key_name in busy):
                    continue
                if decided is Resolution.ORPHANED:
                    try:
                        removed = await self._remove_leftovers(intent, record)
                    except (QkmsError, OSError) as exc:
                        log.warning("intent %s (%s): the provider's leftovers stay for the "
                                    "next sweep: %s", intent.key_id, intent.key_name, exc)
                        continue
                    await self._record("SWEEP", "success", Actor(), None, None,
                                       name=intent.key_name, details={
                                           "key_id": intent.key_id,
                                           "operation": intent.operation,
                                           "destroyed": str(removed)})
                await asyncio.to_thread(self.intents.close, intent.key_id)
                outcomes[intent.key_id] = decided.value
        return outcomes

    def unresolved_intents(self) -> list[str]:
        """Intents older than ``settings.intent_timeout`` that no sweep could resolve yet
        (the provider down, say): for health and ``qkms validate``."""
        now = self.clock()
        return [f"{i.operation} {i.key_name} ({i.key_id}, since {i.at:%Y-%m-%dT%H:%M:%SZ})"
                for i in self.intents.pending()
                if (now - i.at).total_seconds() >= self.settings.intent_timeout]

    async def _remove_leftovers(self, intent: Intent, record: KeyRecord | None) -> int:
        """Destroy what the provider made for the intent and no version of the record names
        (a rotation reuses the provider key of the version it replaces)."""
        previous = None if intent.previous is None else KeyHandle(
            intent.previous["key_id"], resolve_algorithm(intent.previous["algorithm"]),
            intent.previous["ref"])
        found = await self.provider.leftovers(intent.key_id, resolve_algorithm(intent.algorithm),
                                              previous)
        named = [v.provider_ref for v in (record.versions if record else [])]
        removed = 0
        for handle in found:
            if any(handle.ref.items() <= ref.items() for ref in named):
                continue
            await self.provider.destroy(handle)
            self.provider.forget(handle.key_id)
            removed += 1
        return removed

    @staticmethod
    def _check_owner(owner: Any) -> str:
        text = str(owner or "").strip()
        if not text:
            raise InvalidInputError("owner", "must not be empty")
        if len(text) > 253 or any(ord(c) < 32 for c in text):
            raise InvalidInputError("owner", "must be at most 253 printable characters")
        return text

    @staticmethod
    def _check_name(name: str | None, owner: str, usage: Usage, key_id: str) -> str:
        if name is None:
            slug = re.sub(r"[^a-z0-9]+", "-", owner.lower()).strip("-")[:40] or "key"
            return f"{slug}-{usage.value.lower().replace('_', '-')}-{key_id[-8:]}"
        if not NAME_RE.fullmatch(str(name)):
            raise InvalidInputError(
                "name", f"{name!r} must be lower-case DNS labels, optionally namespace/name")
        return name

    # -- use -----------------------------------------------------------------
    async def use_key(
        self,
        key_id: Any,
        operation: Any,
        data: Any = b"",
        *,
        actor: Any = None,
        signature: bytes | None = None,
        context: Any = None,
        salt: bytes | None = None,
        length: int = 32,
        signature_format: str | None = None,
        prehashed: bool = False,
        recovery_id: bool = False,
        low_s: bool | None = None,
        rsa_padding: str | None = None,
    ) -> Any:
        """Run one operation; VERIFY returns a bool, the others an ``OperationResult``.

        SIGN and VERIFY take the signature options of ``qkms.signing`` (ECDSA forms,
        prehashed digests, Ethereum recovery ids, RSA PKCS#1 v1.5)."""
        actor = Actor.parse(actor)
        op_name = str(operation).strip().upper()
        record = version = None
        try:
            op = _enum(Operation, operation, "operation")
            options = SignOptions.parse(signature_format, prehashed, recovery_id, low_s,
                                        rsa_padding)
            record, named = self._resolve(key_id)
            try:
                version, result = await self._dispatch(op, record, named, data,
                                                       signature, context, salt, length,
                                                       options)
            except KeyStateError:
                # Another replica may have rotated or revoked it: decide on fresh state.
                fresh = await asyncio.to_thread(self.catalog.reload_one, record.name)
                if fresh is None or fresh.revision == record.revision:
                    raise
                record = fresh
                named = lifecycle.find_version(fresh, named.key_id) if named else None
                version, result = await self._dispatch(op, record, named, data,
                                                       signature, context, salt, length,
                                                       options)
        except QkmsError as exc:
            await self._record_failure(op_name, exc, actor, record=record, version=version)
            raise
        details = {"algorithm": version.algorithm}
        if isinstance(result, bool):
            details["valid"] = str(result).lower()
        await self._record(op_name, "success", actor, record, version,
                           digests=self._digests(op, data), details=details)
        return result

    async def sign_bridge(self, key_id: Any, tbs: bytes, *, actor: Any = None,
                          rsa_padding: str | None = None) -> OperationResult:
        """SIGN with a version in its grace period the one thing it may still sign: a CA
        bridge, a TBSCertificate certifying the key's active version (the outgoing CA key
        cross-signs its successor).  ``key_id`` names that version.  Not on the data plane;
        audited as SIGN with ``purpose: ca_bridge``."""
        actor = Actor.parse(actor)
        record = version = None
        try:
            options = SignOptions.parse(rsa_padding=rsa_padding)
            record, version = self._resolve(key_id)
            active = lifecycle.active_version(record)
            if version is None or active is None or not lifecycle.in_grace(version, self.clock()):
                raise KeyStateError(f"{key_id}: only a version in its grace period, of a key "
                                    "with an active version, signs a CA bridge")
            pem = self.public_pem(active) or ""
            try:
                certified = certified_spki(_bytes(tbs, "data"))
            except ValueError:
                raise InvalidInputError("data", "is not a DER TBSCertificate") from None
            if certified != base64.b64decode("".join(pem.strip().splitlines()[1:-1])):
                raise InvalidInputError("data", f"a CA bridge from {version.key_id} must "
                                        f"certify the active version {active.key_id}")
            info = resolve_algorithm(version.algorithm)
            options.check(info, Operation.SIGN)
            signed = await sign_with_options(self.provider, self._handle(version), info, tbs,
                                             options, self._public_key(version))
        except QkmsError as exc:
            await self._record_failure("SIGN", exc, actor, record=record, version=version)
            raise
        await self._record("SIGN", "success", actor, record, version,
                           digests=self._digests(Operation.SIGN, tbs),
                           details={"algorithm": version.algorithm, "purpose": "ca_bridge",
                                    "certifies": active.key_id})
        return OperationResult(Operation.SIGN.value, version.key_id, record.name,
                               version.version, version.algorithm, signature=signed.signature)

    async def precheck(self, key_id: Any, operation: Any, *, actor: Any = None) -> None:
        """Refuse (and audit) what would fail for every item of a batch: an unknown key,
        another environment, an operation the key's usage does not allow."""
        try:
            op = _enum(Operation, operation, "operation")
            record, named = self._resolve(key_id)
            version = named or lifecycle.active_version(record) or record.current
            check_operation(resolve_algorithm(version.algorithm), record.usage, op)
        except QkmsError as exc:
            await self._record_failure(str(operation).upper(), exc, Actor.parse(actor),
                                       name=str(key_id))
            raise

    async def check_signature_options(self, key_id: Any, operation: Any,
                                      options: SignOptions, *, actor: Any = None) -> None:
        """Refuse (and audit) signature options the key's algorithm cannot honour, before
        a batch runs; the version named, else the active one, decides."""
        try:
            op = _enum(Operation, operation, "operation")
            record, named = self._resolve(key_id)
            version = named or lifecycle.active_version(record) or record.current
            options.check(resolve_algorithm(version.algorithm), op)
        except QkmsError as exc:
            await self._record_failure(str(operation).upper(), exc, Actor.parse(actor),
                                       name=str(key_id))
            raise

    def _digests(self, op: Operation, data: Any) -> dict[str, str]:
        """A keyed digest (HMAC-SHA256 under the environment's audit MAC key) of the data,
        so that the log proves what was handled without letting its readers test guesses."""
        if op in (Operation.DECRYPT,) or isinstance(data, OperationResult) or not data:
            return {}
        return {"data": self.audit_mac.digest(_bytes(data, "data"))}

    def _usable(self, record: KeyRecord, named: KeyVersion | None, op: Operation) -> KeyVersion:
        """The version an operation runs on: the one named, else the active one."""
        version = named or lifecycle.active_version(record) or record.current
        check_operation(resolve_algorithm(version.algorithm), record.usage, op)
        lifecycle.check_use(version, op, self.clock())
        return version

    def _handle(self, version: KeyVersion) -> KeyHandle:
        return KeyHandle(version.key_id, resolve_algorithm(version.algorithm), version.provider_ref)

    async def _dispatch(self, op: Operation, record: KeyRecord, named: KeyVersion | None,
                        data: Any, signature: bytes | None, context: Any,
                        salt: bytes | None, length: int,
                        options: SignOptions = NO_OPTIONS) -> tuple[KeyVersion, Any]:
        if op is Operation.VERIFY:
            return self._verify(record, named, _bytes(data, "data"), signature, options)
        if op is Operation.DECRYPT:
            options.check(resolve_algorithm(record.algorithm), op)
            return await self._decrypt(record, named, data, _context(context))
        version = self._usable(record, named, op)
        info = resolve_algorithm(version.algorithm)
        options.check(info, op)
        handle = self._handle(version)

        def result(**outputs: Any) -> OperationResult:
            return OperationResult(op.value, version.key_id, record.name, version.version,
                                   version.algorithm, **outputs)

        if op is Operation.SIGN:
            public = self._public_key(version) if options.given else None
            signed = await sign_with_options(self.provider, handle, info, _bytes(data, "data"),
                                             options, public)
            return version, result(signature=signed.signature, recovery_id=signed.recovery_id)
        if op is Operation.ENCRYPT:
            plaintext, aad = _bytes(data, "data"), token_aad(version.key_id, _context(context))
            counted = info.symmetric and self.budget.applies(info.name)
            if counted:  # random 96-bit nonces: counted (durably) before the encryption
                await self.budget.count(version.key_id)
            body = (await self.provider.encrypt(handle, plaintext, aad) if info.symmetric
                    else self._public_key(version).encrypt(plaintext, aad))
            if counted and self.budget.due(version.key_id):
                self._rotate_spent(record.name, version.key_id)
            return version, result(ciphertext=make_token(version.key_id, body))
        if op is Operation.ENCAPSULATE:
            ciphertext, secret = self._public_key(version).encapsulate()
            return version, result(ciphertext=ciphertext, shared_secret=secret)
        if op is Operation.DECAPSULATE:
            try:
                secret = await self.provider.decapsulate(handle, _bytes(data, "data"))
            except (InvalidCiphertext, ValueError):
                raise InvalidInputError("data", f"not a valid {info.name} ciphertext") from None
            return version, result(shared_secret=secret)
        if not isinstance(length, int) or not 1 <= length <= MAX_DERIVE_LENGTH:
            raise InvalidInputError("length", f"must be an integer from 1 to {MAX_DERIVE_LENGTH}")
        derived = await self.provider.derive(handle, _context(context) or _bytes(data, "data"),
                                             length, salt)
        return version, result(derived_key=derived)

    def _verify(self, record: KeyRecord, named: KeyVersion | None, data: bytes,
                signature: bytes | None,
                options: SignOptions = NO_OPTIONS) -> tuple[KeyVersion, bool]:
        if signature is None:
            raise InvalidInputError("signature", "is required for VERIFY")
        signature = _bytes(signature, "signature")
        now = self.clock()
        candidates = [named] if named else lifecycle.verifying_versions(record, now)
        if not candidates:
            self._usable(record, None, Operation.VERIFY)  # raises with the reason
        for version in candidates:
            self._usable(record, version, Operation.VERIFY)
            public = self._public_key(version)
            if options.given:
                options.check(resolve_algorithm(version.algorithm), Operation.VERIFY)
                options.check_digest(data)
                valid = verify_with_options(public, data, signature, options)
            else:
                valid = public.verify(data, signature)
            if valid:
                return version, True
        return candidates[0], False

    async def _decrypt(self, record: KeyRecord, named: KeyVersion | None, data: Any,
                       context: bytes) -> tuple[KeyVersion, OperationResult]:
        token_key_id, body = parse_token(data)
        version = lifecycle.find_version(record, token_key_id)
        if version is None or (named is not None and named.key_id != token_key_id):
            raise InvalidInputError(
                "data", f"ciphertext was made by {token_key_id}, not by a version of {record.name}")
        self._usable(record, version, Operation.DECRYPT)
        try:
            plaintext = await self.provider.decrypt(self._handle(version), body,
                                                    token_aad(version.key_id, context))
        except (InvalidCiphertext, ValueError):
            raise DecryptionError(
                f"Decryption failed: ciphertext for {version.key_id} is invalid, was tampered "
                "with, or its context differs") from None
        return version, OperationResult(Operation.DECRYPT.value, version.key_id, record.name,
                                        version.version, version.algorithm, plaintext=plaintext)

    # -- rotation and revocation ---------------------------------------------
    async def rotate_key(
        self,
        key_id: Any,
        *,
        reason: Any = RotationReason.SCHEDULED,
        grace_period: str | None = None,
        immediate: bool = False,
        algorithm: Any = None,
        actor: Any = None,
        request_id: str | None = None,
        details: dict[str, str] | None = None,
    ) -> RotationResult:
        """Make a new version active; COMPROMISE revokes the old one at once.

        A new ``algorithm`` (same usage) makes this a migration.  ``request_id``
        makes the call idempotent: a request already handled is not repeated.
        """
        actor = Actor.parse(actor)
        record = None
        try:
            why = _enum(RotationReason, reason, "reason")
            if grace_period is not None:
                durations.parse_duration(grace_period, "grace_period")
            record, _ = self._resolve(key_id, change="ROTATE")
            async with self._lock(record.name):
                record = self._current(record)
                if request_id and request_id in record.handled_requests:
                    return self._replayed(record, why)
                return await self._rotate(record, why, grace_period, immediate, algorithm,
                                          actor, request_id, details)
        except QkmsError as exc:
            self.counters["failures"]["rotation"] += 1
            if not getattr(exc, "audited", False):
                await self._record_failure("ROTATE", exc, actor, record=record)
            if isinstance(exc, InvalidInputError | KeyNotFoundError | EnvironmentMismatchError):
                raise
            if isinstance(exc, RotationFailedError):
                raise
            failure = RotationFailedError(exc.message)
            failure.retryable = isinstance(  # type: ignore[attr-defined]
                exc, ProviderUnavailableError | StorageError)
            raise failure from exc

    def _rotate_spent(self, name: str, key_id: str) -> None:
        """A random-nonce AEAD version reached ``aead_max_encryptions``: rotate the key (an
        audited SCHEDULED rotation, its trigger in the entry's details) in the background;
        the old version stays in grace and keeps decrypting."""
        async def rotate() -> None:
            record = self.catalog.get(name)
            active = lifecycle.active_version(record) if record else None
            if active is None or active.key_id != key_id:
                return  # rotated or revoked meanwhile
            try:
                await self.rotate_key(name, reason=RotationReason.SCHEDULED, details={
                    "trigger": "encryption_limit",
                    "limit": str(self.settings.aead_max_encryptions)})
            except QkmsError as exc:
                self.budget.failed(key_id)
                log.error("%s: rotation at the encryption limit failed: %s", name, exc)

        task = asyncio.get_running_loop().create_task(rotate())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _replayed(self, record: KeyRecord, why: RotationReason) -> RotationResult:
        current = record.current
        previous = record.versions[-2] if len(record.versions) > 1 else current
        return RotationResult(record.name, previous.key_id, current.key_id, why.value,
                              current.version, current.algorithm, previous.state.value,
                              previous.grace_until, replayed=True)

    async def _rotate(self, record: KeyRecord, why: RotationReason, grace_period: str | None,
                      immediate: bool, algorithm: Any, actor: Actor,
                      request_id: str | None,
                      details: dict[str, str] | None = None) -> RotationResult:
        old = lifecycle.active_version(record)
        if old is None:
            raise RotationFailedError(
                f"{record.name} has no active version (it is "
                f"{lifecycle.key_state(record).value.lower()})")
        info = self._check_algorithm(algorithm or old.algorithm, record.usage)
        migration = info.name != old.algorithm
        if migration and why in (RotationReason.SCHEDULED, RotationReason.MANUAL):
            why = RotationReason.MIGRATION
        if grace_period is not None:
            lifecycle.validate_schedule(record.rotation_schedule, grace_period)
        new_key_id = self._new_key_id()
        operation = "MIGRATE" if migration else "ROTATE"
        await self._announce(operation, record.name, new_key_id, info, old)
        created = await self.provider.new_version(self._handle(old), new_key_id, info)
        now = self.clock()
        new = self._version(new_key_id, record.current.version + 1, info, created, now)
        updated = lifecycle.rotate(record, new, reason=why, now=now,
                                   grace_period=grace_period, immediate=immediate)
        if request_id:
            updated = updated.model_copy(
                update={"handled_requests": [*record.handled_requests, request_id][-32:]})
        demoted = lifecycle.find_version(updated, old.key_id)
        assert demoted is not None
        await self._record(operation, "success", actor, updated, new, reason=why.value,
                           details={**(details or {}), "old_key_id": old.key_id,
                                    "old_state": demoted.state.value, "algorithm": info.name,
                                    **self._generation(updated)})
        await self._commit(operation, updated, new, actor)
        if demoted.state is not VersionState.GRACE:
            await self.provider.retire(self._handle(old))
        self.counters["rotations"][why.value] += 1
        result = RotationResult(record.name, old.key_id, new_key_id, why.value, new.version,
                                info.name, demoted.state.value, demoted.grace_until)
        await self.events.emit("keyRotated", result)
        return result

    async def revoke_key(self, key_id: Any, reason: str, *, actor: Any = None,
                         request_id: str | None = None) -> dict[str, Any]:
        """Revoke the key (by name or its active version) or one older version."""
        actor = Actor.parse(actor)
        record = None
        try:
            if not str(reason or "").strip():
                raise InvalidInputError("reason", "must not be empty")
            record, named = self._resolve(key_id, change="REVOKE")
            async with self._lock(record.name):
                record = self._current(record)
                if request_id and request_id in record.handled_requests:
                    return {"key_id": str(key_id), "name": record.name, "reason": reason,
                            "revoked": [], "replayed": True}
                updated = lifecycle.revoke(record, reason, self.clock(),
                                           named.key_id if named else None)
                if request_id:
                    updated = updated.model_copy(update={
                        "handled_requests": [*record.handled_requests, request_id][-32:]})
                revoked = [v.key_id for v, w in zip(record.versions, updated.versions, strict=True)
                           if v.state is not w.state]
                await self._record("REVOKE", "success", actor, updated, named, reason=reason,
                                   details={"revoked": ",".join(revoked),
                                            **self._generation(updated)})
                await asyncio.to_thread(self.catalog.put, updated)
        except QkmsError as exc:
            await self._record_failure("REVOKE", exc, actor, record=record)
            raise
        for version in updated.versions:
            if version.key_id in revoked:
                await self.provider.retire(self._handle(version))
        event = {"key_id": str(key_id), "name": record.name, "reason": reason, "revoked": revoked}
        await self.events.emit("keyRevoked", event)
        return event

    async def schedule_key_deletion(self, key_id: Any, window: str | None = None, *,
                                    actor: Any = None) -> KeyRecord:
        window = window or lifecycle.DEFAULT_DELETION_WINDOW
        record = await self._transition(
            "SCHEDULE_DELETION", key_id, actor,
            lambda r, now: lifecycle.schedule_deletion(r, window, now), {"window": window})
        days = int(durations.seconds(window) // 86400)
        for version in record.versions:
            if version.state is VersionState.PENDING_DELETION:
                await self.provider.schedule_destroy(self._handle(version), days)
        return record

    async def cancel_key_deletion(self, key_id: Any, *, actor: Any = None) -> KeyRecord:
        record = await self._transition("CANCEL_DELETION", key_id, actor,
                                        lifecycle.cancel_deletion)
        for version in record.versions:
            if version.state is not VersionState.DESTROYED:
                await self.provider.cancel_destroy(self._handle(version))
        return record

    async def _transition(self, operation: str, key_id: Any, actor: Any, change: Any,
                          details: dict[str, str] | None = None) -> KeyRecord:
        actor = Actor.parse(actor)
        record = None
        try:
            record, _ = self._resolve(key_id, change=operation)
            async with self._lock(record.name):
                record = self._current(record)
                updated = change(record, self.clock())
                await self._record(operation, "success", actor, updated, None,
                                   details={**(details or {}), **self._generation(updated)})
                return await asyncio.to_thread(self.catalog.put, updated)
        except QkmsError as exc:
            await self._record_failure(operation, exc, actor, record=record)
            raise

    async def update_schedule(self, key_id: Any, rotation_schedule: str, grace_period: str, *,
                              actor: Any = None) -> KeyRecord:
        """Re-plan a key's rotation (a policy or spec change); audited as POLICY_CHANGE."""
        lifecycle.validate_schedule(rotation_schedule, grace_period)
        return await self._transition(
            "POLICY_CHANGE", key_id, actor,
            lambda r, now: r.model_copy(update={"rotation_schedule": rotation_schedule,
                                                "grace_period": grace_period}),
            {"rotation_schedule": rotation_schedule, "grace_period": grace_period})

    async def release_key(self, key_id: Any, *, actor: Any = None) -> KeyRecord:
        """Record that the resource managing a key is gone while the key is retained."""
        return await self._transition("RELEASE", key_id, actor, lambda r, now: r)

    async def advance(self, name: str, now: datetime | None = None) -> list[str]:
        """Do whatever time has made due for one key: retire ended graces,
        rotate on schedule, destroy versions past their deletion window."""
        now = now or self.clock()
        actions: list[str] = []
        await self.audit_rollbacks()  # a rolled-back record found on reading: audited here
        record = self.catalog.get(name)
        if record is None or record.environment is not self.environment:
            return actions
        if self.settings.rotation_enabled and lifecycle.rotation_due(record, now):
            await self.rotate_key(name, reason=RotationReason.SCHEDULED)
            actions.append("rotated")
        async with self._lock(name):
            record = self.catalog.get(name)
            assert record is not None
            updated = lifecycle.expire_grace(record, now)
            if updated is not record:
                actions.append("retired")
                for old, new in zip(record.versions, updated.versions, strict=True):
                    if old.state is not new.state:
                        await self.provider.retire(self._handle(new))
            for version in lifecycle.destroyable(updated, now):
                await self.provider.destroy(self._handle(version))
                self._public.pop(version.key_id, None)
                actions.append("destroyed")
            updated = lifecycle.destroy(updated, now)
            if actions and actions != ["rotated"]:
                await self._record("EXPIRE", "success", Actor(), updated, None,
                                   details={"actions": ",".join(actions),
                                            **self._generation(updated)})
                await asyncio.to_thread(self.catalog.put, updated)
        return actions

    async def tick(self, now: datetime | None = None) -> dict[str, list[str]]:
        """``advance`` every key of this environment; returns what happened per key."""
        await self.audit_rollbacks()
        await self.resolve_intents()
        done = {}
        for record in self.catalog.all():
            actions = await self.advance(record.name, now)
            if actions:
                done[record.name] = actions
        return done

    # -- audit -----------------------------------------------------------------
    async def _deliver(self, entry: AuditEntry) -> None:
        """Every stored entry, in chain order: remember it for Events, then announce it."""
        if entry.key_name:
            self.last_audit[entry.key_name] = entry
        await self.events.emit("auditEvent", entry)

    async def _ensure_audit_key(self) -> None:
        """The checkpoint key: hybrid where PQC is allowed, made before the first entry and
        never rotated (verifiers pin it), so the signer never has to create it mid-append."""
        self._audit_key_checked = True
        # Another process on this store may have made it since we read the catalog.
        if self.catalog.get(AUDIT_KEY) is None and self.catalog.reload_one(AUDIT_KEY) is None:
            algorithm = "Ed25519+ML-DSA-65" if self.settings.pqc_enabled else "Ed25519"
            try:
                await self.create_key(name=AUDIT_KEY, usage="SIGNING", algorithm=algorithm,
                                      owner="qkms", rotation_schedule="P100Y",
                                      labels={SYSTEM_LABEL: "audit"})
            except RecordExistsError:  # made at the same moment elsewhere: that one it is
                if self.catalog.reload_one(AUDIT_KEY) is None:
                    raise
            except BaseException:
                self._audit_key_checked = False  # tried again by the next entry
                raise

    def audit_public_key(self) -> bytes | None:
        """The checkpoint key's public key (what verifiers pin), once it exists."""
        record = self.catalog.get(AUDIT_KEY)
        version = lifecycle.active_version(record) if record else None
        return version.public_key if version else None

    async def _sign_checkpoint(self, body: bytes) -> tuple[bytes, str, bytes]:
        record = self.catalog.get(AUDIT_KEY)
        version = lifecycle.active_version(record) if record else None
        if version is None or version.public_key is None:
            raise AuditStorageError("the audit checkpoint key is missing or not active")
        return await self.provider.sign(self._handle(version), body), version.key_id, \
            version.public_key

    async def prune_audit(self) -> Any:
        """Apply the retention period: drop whole audit segments older than it, only where a
        signed checkpoint anchors what remains (so the rest still verifies).  The audit MAC
        key is rotated here too, and retired MAC keys are kept as long as their entries."""
        from qkms.audit.retention import cutoff_for, prune

        now = self.clock()
        cutoff = cutoff_for(self.settings.audit_retention, now)
        done = await asyncio.to_thread(self.audit_mac.maintain, now - cutoff)
        if done:
            log.info("audit MAC keys of %s: %s", self.environment.value, ", ".join(done))
        if not isinstance(self.audit, AuditChain):
            return None
        return await asyncio.to_thread(prune, self.audit.root, cutoff)

    async def close(self) -> None:
        """Sign a last checkpoint and release the audit log (CLI commands, shutdown)."""
        if self._joined and isinstance(self.audit, AuditChain):
            self.audit.unlisten(self._deliver)
        close = getattr(self.audit, "close", None)
        if close is not None:
            await close()
        if self.catalog.feed is not None:
            self.catalog.feed.close()

    async def _record(self, operation: str, result: str, actor: Actor,
                      record: KeyRecord | None, version: KeyVersion | None, *,
                      reason: str | None = None, digests: dict[str, str] | None = None,
                      details: dict[str, str] | None = None,
                      name: str | None = None) -> AuditEntry:
        self.counters["operations"][f"{operation}:{result}"] += 1
        entry = AuditEntry(
            time=self.clock(), environment=self.environment.value, operation=operation,
            result=result, actor=actor, key_name=record.name if record else name,
            key_id=version.key_id if version else None,
            version=version.version if version else None, reason=reason,
            digests=digests or {}, details=details or {},
        )
        if not self.settings.audit_enabled:
            await self._deliver(entry)
            return entry
        if not self._audit_key_checked:
            await self._ensure_audit_key()
        try:
            stored = await self.audit.append(entry)
        except Exception as exc:
            self.counters["failures"]["audit"] += 1
            failure = exc if isinstance(exc, AuditStorageError) else \
                AuditStorageError(type(exc).__name__)
            if self.settings.fails_closed:
                log.error("%s: refusing %s (fail-closed)", failure, operation)
                raise failure from exc
            log.error("%s: %s goes ahead UNAUDITED (fail-open)", failure, operation)
            await self._deliver(entry)
            return entry
        if not self._sink_delivers:
            await self._deliver(stored)
        return stored

    async def audit_denied(self, operation: str, key_name: str | None, actor: Any,
                           exc: QkmsError, details: dict[str, str] | None = None) -> None:
        """Audit a request refused before it reached the key (authentication, RBAC)."""
        await self._record_failure(str(operation).upper()[:32], exc, Actor.parse(actor),
                                   name=key_name, details=details)

    async def audit_key_event(self, operation: str, key_name: str, actor: Any, *,
                              result: str = "success", key_id: str | None = None,
                              reason: str | None = None,
                              details: dict[str, str] | None = None) -> AuditEntry:
        """Audit what was done with a key beyond one use_key call (a certificate issued
        with its SIGN), naming the version ``key_id`` (else the active one)."""
        record = self.catalog.get(key_name)
        version = None
        if record is not None:
            version = (lifecycle.find_version(record, key_id) if key_id else None) or \
                lifecycle.active_version(record)
        return await self._record(str(operation).upper()[:32], result, Actor.parse(actor),
                                  record, version, reason=reason, details=details,
                                  name=key_name)

    async def _record_failure(self, operation: str, exc: QkmsError, actor: Actor, *,
                              record: KeyRecord | None = None, version: KeyVersion | None = None,
                              name: str | None = None,
                              details: dict[str, str] | None = None) -> None:
        denied = isinstance(exc, KeyStateError | EnvironmentMismatchError | Forbidden |
                            Unauthenticated | OperationNotAllowedError | InvalidInputError |
                            KeyNotFoundError)
        self.counters["failures"][exc.code] += 1
        if isinstance(exc, RecordRollbackError):
            await self.audit_rollbacks()  # the finding first, then this refusal
        details = {**(details or {}), "code": exc.code}
        stored = self.catalog.get((record.name if record else name) or "")
        if isinstance(exc, StorageError) and stored is not None:
            details["generation"] = str(stored.revision)  # the write failed: this one stayed
        if isinstance(exc, RecordRollbackError):
            details.update(found=str(exc.found), expected=str(exc.expected))
        if name is not None and len(name) > MAX_AUDITED_NAME:  # a refusal records a bounded name
            name = name[:MAX_AUDITED_NAME] + "..."
        shown = version or (record and (lifecycle.active_version(record) or record.current))
        if shown:
            details["algorithm"] = shown.algorithm
        elif name and self.catalog.get(name):
            details["algorithm"] = self.catalog.get(name).algorithm  # type: ignore[union-attr]
        try:
            reason = exc.message if len(exc.message) <= MAX_AUDITED_REASON \
                else exc.message[:MAX_AUDITED_REASON] + "..."
            await self._record(operation, "denied" if denied else "error", actor, record,
                               version, reason=reason, name=name, details=details)
        except AuditStorageError:
            log.error("could not audit a failed %s", operation)

    async def audit_rollbacks(self) -> None:
        """Audit each rolled-back record found (once per finding): RECORD_ROLLBACK, error."""
        for name, exc in list(self.catalog.rolled_back.items()):
            mark = (name, exc.found, exc.expected)
            if mark in self._rollbacks_audited:
                continue
            self._rollbacks_audited.add(mark)
            try:
                await self._record("RECORD_ROLLBACK", "error", Actor(), None, None, name=name,
                                   reason=exc.message,
                                   details={"code": exc.code, "record": exc.record,
                                            "found": str(exc.found),
                                            "expected": str(exc.expected)})
            except AuditStorageError:
                self._rollbacks_audited.discard(mark)
                log.error("could not audit the rolled-back record of %s", name)

    # -- statistics and health -------------------------------------------------
    def user_records(self) -> list[KeyRecord]:
        """This environment's keys, without qkms's own (the audit checkpoint key)."""
        return [r for r in self.catalog.all()
                if r.environment is self.environment and SYSTEM_LABEL not in r.labels]

    async def get_statistics(self) -> dict[str, Any]:
        records = self.user_records()
        versions = [v for r in records for v in r.versions]
        return {
            "environment": self.environment.value,
            "keys": len(records),
            "versions": len(versions),
            "by_algorithm": dict(Counter(r.algorithm for r in records)),
            "by_usage": dict(Counter(r.usage.value for r in records)),
            "by_state": dict(Counter(lifecycle.key_state(r).value for r in records)),
            "versions_by_state": dict(Counter(v.state.value for v in versions)),
            "by_provider": dict(Counter(r.provider.value for r in records)),
            "operations": dict(self.counters["operations"]),
            "rotations": dict(self.counters["rotations"]),
            "failures": dict(self.counters["failures"]),
            "created": dict(self.counters["created"]),
        }

    async def health_check(self) -> dict[str, Any]:
        components: dict[str, dict[str, Any]] = {}
        intents = await asyncio.to_thread(self.unresolved_intents)
        components["store"] = {
            "status": "degraded" if self.catalog.corrupt or intents else "healthy",
            "backend": self.sealed.records.describe(),
            "keys": len(self.catalog.all()),
            "corrupt_records": sorted(self.catalog.corrupt),
            "rolled_back_keys": {name: f"generation {exc.found}, the audit chain says "
                                       f"{exc.expected}"
                                 for name, exc in sorted(self.catalog.rolled_back.items())},
            "unresolved_intents": intents,
        }
        components["kek"] = {"status": "healthy", "kek_id": self.sealed.sealer.kek_id}
        try:
            provider = await asyncio.wait_for(self.provider.health(), timeout=5)
            components["provider"] = {"status": provider.status, "type": self.provider.type.value,
                                      **provider.detail}
        except (TimeoutError, QkmsError, OSError) as exc:
            components["provider"] = {"status": "unhealthy", "type": self.provider.type.value,
                                      "error": str(exc) or type(exc).__name__}
        components["audit"] = (await self.audit.health() if self.settings.audit_enabled
                               else {"status": "degraded", "detail": "audit disabled"})
        states = {c["status"] for c in components.values()}
        status = ("unhealthy" if "unhealthy" in states
                  else "degraded" if "degraded" in states else "healthy")
        return {"status": status, "environment": self.environment.value,
                "components": components}


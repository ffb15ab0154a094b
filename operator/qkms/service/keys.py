"""Making keys: create and import (natively where the provider can, by envelope
otherwise), each audited before the catalog names it; and the checkpoint key."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from datetime import datetime
from typing import Any

from qkms import lifecycle
from qkms.audit.entry import Actor
from qkms.crypto import suite_for
from qkms.crypto.base import InvalidCiphertext
from qkms.errors import (
    InvalidInputError,
    QkmsError,
    RecordExistsError,
    StorageError,
)
from qkms.model import durations
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import Usage
from qkms.model.keys import KeyMetadata, KeyRecord, KeyVersion
from qkms.model.schedules import effective_grace_period
from qkms.providers.base import CreatedKey

from .inputs import (
    AUDIT_KEY,
    NAME_RE,
    SYSTEM_LABEL,
    _enum,
)
from .sweep import IntentSweep

log = logging.getLogger("key-management:service")


class KeyCreation(IntentSweep):
    """Making keys: create and import, and the checkpoint key."""

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

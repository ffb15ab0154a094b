"""Changing keys: rotation (scheduled, manual, compromise, migration), revocation,
deletion windows, schedules, and what time has made due."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from qkms import lifecycle
from qkms.audit.entry import Actor
from qkms.errors import (
    EnvironmentMismatchError,
    InvalidInputError,
    KeyNotFoundError,
    ProviderUnavailableError,
    QkmsError,
    RotationFailedError,
    StorageError,
)
from qkms.model import durations
from qkms.model.enums import RotationReason, VersionState
from qkms.model.keys import KeyRecord

from .inputs import (
    _enum,
)
from .keys import KeyCreation
from .results import RotationResult

log = logging.getLogger("key-management:service")


class KeyTransitions(KeyCreation):
    """Changing keys: rotation, revocation, deletion, and what time has made due."""

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

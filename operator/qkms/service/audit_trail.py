"""Recording: every operation's audit entry, refusals, rollbacks found on reading,
retention and closing the log."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from qkms import lifecycle
from qkms.audit.chain import AuditChain
from qkms.audit.entry import Actor, AuditEntry
from qkms.errors import (
    AuditStorageError,
    EnvironmentMismatchError,
    Forbidden,
    InvalidInputError,
    KeyNotFoundError,
    KeyStateError,
    OperationNotAllowedError,
    QkmsError,
    RecordRollbackError,
    StorageError,
    Unauthenticated,
)
from qkms.model.keys import KeyRecord, KeyVersion

from .core import ServiceCore
from .inputs import (
    MAX_AUDITED_NAME,
    MAX_AUDITED_REASON,
)

log = logging.getLogger("key-management:service")
_BLANK = AuditEntry(datetime.min, "", "", "")  # what each entry is made from (every field set)


class AuditTrail(ServiceCore):
    """Recording what happens to keys, and keeping the audit log."""

    async def _ensure_audit_key(self) -> None:
        """Make the checkpoint key before the first entry (KeyCreation does)."""

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
        entry = _BLANK.varied(  # as AuditEntry(...) would, without a setattr per field
            time=self.clock(), environment=self.environment.value, operation=operation,
            result=result, actor=actor, key_name=record.name if record else name,
            key_id=version.key_id if version else None,
            version=version.version if version else None, reason=reason,
            digests=digests or {}, details=details or {},
        )
        return (await self._store([entry]))[0]

    async def _store(self, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Append entries of one operation kind (one, or a batch's items: one group
        commit), or go ahead unaudited where the audit fails open."""
        first = entries[0]
        self.counters["operations"][f"{first.operation}:{first.result}"] += len(entries)
        if not self.settings.audit_enabled:
            for entry in entries:
                await self._deliver(entry)
            return entries
        if not self._audit_key_checked:
            await self._ensure_audit_key()
        try:
            stored = ([await self.audit.append(first)] if len(entries) == 1
                      else await self.audit.append_many(entries))
        except Exception as exc:
            self.counters["failures"]["audit"] += 1
            failure = exc if isinstance(exc, AuditStorageError) else \
                AuditStorageError(type(exc).__name__)
            if self.settings.fails_closed:
                log.error("%s: refusing %s (fail-closed)", failure, first.operation)
                raise failure from exc
            log.error("%s: %s goes ahead UNAUDITED (fail-open)", failure, first.operation)
            for entry in entries:
                await self._deliver(entry)
            return entries
        if not self._sink_delivers:
            for entry in stored:
                await self._deliver(entry)
        return stored

    async def audit_denied(self, operation: str, key_name: str | None, actor: Any,
                           exc: QkmsError, details: dict[str, str] | None = None) -> None:
        """Audit a request refused before it reached the key (authentication, RBAC)."""
        await self._record_failure(str(operation).upper()[:32], exc, Actor.parse(actor),
                                   name=key_name, details=details)

    async def audit_store_event(self, operation: str, actor: Any,
                                details: dict[str, str]) -> AuditEntry:
        """Audit a change to the whole store (a restore from backup)."""
        return await self._record(operation, "success", Actor.parse(actor), None, None,
                                  details=details)

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

"""Intents before every provider write (store/intents.py), and the sweep that resolves
what a crash or a timeout left open."""

from __future__ import annotations

import asyncio
import logging

from qkms.audit.entry import Actor
from qkms.errors import (
    QkmsError,
    StorageError,
)
from qkms.model.algorithms import AlgorithmInfo, resolve_algorithm
from qkms.model.keys import KeyRecord, KeyVersion
from qkms.providers.base import KeyHandle
from qkms.store.intents import Intent, Resolution, resolution

from .audit_trail import AuditTrail

log = logging.getLogger("key-management:service")


class IntentSweep(AuditTrail):
    """Intents before every provider write, and the sweep that resolves them."""

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
                if not await asyncio.to_thread(self.intents.is_open, intent.key_id):
                    continue  # settled while we waited for the key's lock
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

    def open_intents(self) -> set[str]:
        """The key IDs of the intents open now (versions being made, or cut short)."""
        return {i.key_id for i in self.intents.pending()}

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
            await self.provider.destroy(handle)  # forgets any cached material too
            removed += 1
        return removed

"""One KeyManagementService per environment, configured from that environment's KeyPolicy.

Every environment keeps its own catalog under ``<data_dir>/<env>`` (``Settings.scoped``,
the layout every command uses; or its own record store in a cluster), all sealed under
the same master key.  A policy change that touches the service (provider, PQC, audit)
rebuilds that environment's service; keys and their records are untouched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from qkms.config import Settings
from qkms.model.enums import Environment
from qkms.model.policy import KeyPolicy
from qkms.service import KeyManagementService
from qkms.store.records import RecordStore

log = logging.getLogger("key-management:registry")

RecordsFactory = Callable[[Environment], RecordStore | None]


class ServiceRegistry:
    def __init__(self, settings: Settings, *, records: RecordsFactory | None = None,
                 clock: Any = None, kek: bytes | None = None) -> None:
        self.settings = settings
        self.records = records or (lambda env: None)
        self.clock = clock
        self.kek = kek
        self.on_new: list[Callable[[KeyManagementService], None]] = []  # metrics, ...
        self._services: dict[Environment, tuple[tuple, KeyManagementService]] = {}
        self._lock = threading.RLock()

    def settings_for(self, environment: Environment, policy: KeyPolicy | None,
                     credentials: dict[str, str] | None = None) -> Settings:
        """``credentials``: the policy's credentialsSecretRef Secret, read by the caller."""
        changes: dict[str, Any] = {}
        if policy is not None:
            changes.update(provider=policy.spec.provider.type,
                           pqc_enabled=policy.spec.pqc_policy.enabled,
                           audit_enabled=policy.spec.audit_policy.enabled,
                           audit_fail_closed=policy.spec.audit_fails_closed,
                           audit_retention=policy.spec.audit_policy.retention_period,
                           provider_options={**self.settings.provider_options,
                                             **policy.spec.provider.settings,
                                             **(credentials or {})})
        return replace(self.settings.scoped(environment), **changes)

    async def aget(self, environment: Environment, policy: KeyPolicy | None = None,
                   credentials: dict[str, str] | None = None) -> KeyManagementService:
        """:meth:`get` from the event loop: a service is made (its store listed, its catalog
        read, its audit MAC key made on first use) in a worker thread, never on the loop,
        whose store may be the Kubernetes API."""
        known = self._services.get(environment)
        if known is not None and known[0] == self._fingerprint(
                self.settings_for(environment, policy, credentials)):
            return known[1]
        return await asyncio.to_thread(self._get_ready, environment, policy, credentials)

    def _get_ready(self, environment: Environment, policy: KeyPolicy | None,
                   credentials: dict[str, str] | None) -> KeyManagementService:
        service = self.get(environment, policy, credentials)
        if service.settings.audit_enabled:
            service.audit_mac.current()  # made now, not by the first audited operation
        return service

    @staticmethod
    def _fingerprint(settings: Settings) -> tuple:
        return (settings.provider, settings.pqc_enabled, settings.audit_enabled,
                settings.audit_fail_closed, tuple(sorted(settings.provider_options.items())))

    def get(self, environment: Environment, policy: KeyPolicy | None = None,
            credentials: dict[str, str] | None = None) -> KeyManagementService:
        with self._lock:  # one service per environment, whichever thread asks first
            return self._get(environment, policy, credentials)

    def _get(self, environment: Environment, policy: KeyPolicy | None,
             credentials: dict[str, str] | None) -> KeyManagementService:
        settings = self.settings_for(environment, policy, credentials)
        fingerprint = self._fingerprint(settings)
        known = self._services.get(environment)
        if known is None or known[0] != fingerprint:
            # A rebuilt service takes over the open audit log: one writer per folder.
            audit = known[1].audit if known is not None and settings.audit_enabled else None
            service = KeyManagementService(settings, records=self.records(environment),
                                           clock=self.clock, kek=self.kek, audit=audit)
            self._services[environment] = (fingerprint, service)
            for hook in self.on_new:
                hook(service)
            return service
        return known[1]

    def existing(self, environment: Environment) -> KeyManagementService | None:
        """The environment's service if one is open; never makes one (for refusals)."""
        known = self._services.get(environment)
        return known[1] if known is not None else None

    def all(self) -> list[KeyManagementService]:
        return [service for _, service in self._services.values()]

    async def resolve_intents(self) -> None:
        """Sweep every open environment's intents (store/intents.py); one that fails (its
        provider down, say) never stops the others and is swept again next time."""
        for service in self.all():
            try:
                await service.resolve_intents()
            except Exception:  # noqa: BLE001 - logged, retried at the next sweep
                log.exception("sweeping the %s intents failed", service.environment.value)

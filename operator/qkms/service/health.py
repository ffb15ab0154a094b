"""Statistics and health: what ``/health/keys``, metrics and ``qkms validate`` report."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from qkms import lifecycle
from qkms.errors import (
    QkmsError,
)

from .operations import KeyOperations

log = logging.getLogger("key-management:service")


class ServiceHealth(KeyOperations):
    """Statistics and health: what ``/health/keys``, metrics and ``qkms validate`` report."""

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

"""LOCAL_DEV: every key generated in software and sealed under the KEK at rest.

The default provider: no cloud account, no cluster.  All of its work is done
by ``SoftwareKeys`` with the KEK as the wrapping (see ``software``).
"""

from __future__ import annotations

from qkms.config import Settings
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import ProviderType
from qkms.store.sealed import SealedStore

from .base import Capability, CreatedKey, KeyHandle, ProviderHealth
from .software import KekWrapper, SoftwareKeys


class LocalDevProvider(SoftwareKeys):
    type = ProviderType.LOCAL_DEV

    def __init__(self, store: SealedStore, cache_seconds: float = 60.0) -> None:
        super().__init__(store, KekWrapper(), Capability.SOFTWARE, cache_seconds)

    def capability(self, algorithm: AlgorithmInfo) -> Capability:
        return Capability.SOFTWARE

    async def new_version(self, previous: KeyHandle, key_id: str,
                          algorithm: AlgorithmInfo) -> CreatedKey:
        return await self.create(key_id, algorithm)

    async def schedule_destroy(self, key: KeyHandle, days: int) -> None:
        """Nothing to tell: the service destroys the record when the window ends."""

    async def cancel_destroy(self, key: KeyHandle) -> None:
        """Nothing to undo."""

    async def retire(self, key: KeyHandle) -> None:
        self.forget(key.key_id)

    async def health(self) -> ProviderHealth:
        try:
            count = await self.count()
        except OSError as exc:
            return ProviderHealth("unhealthy", {"store": self.store.records.describe(),
                                                "error": type(exc).__name__})
        return ProviderHealth("healthy", {"store": self.store.records.describe(),
                                          "versions": count, "cached": len(self._cache)})


def build(settings: Settings, sealed: SealedStore) -> LocalDevProvider:
    return LocalDevProvider(sealed, cache_seconds=settings.key_cache_seconds)

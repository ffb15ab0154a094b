"""LOCAL_DEV: keys generated in software and sealed under the KEK at rest.

Each version's private material is one sealed record ``material/<key_id>``.
Private operations unseal it, load it and run it; the loaded key object may be
kept for ``cache_seconds`` (default 60, 0 disables) so a busy key is not
unsealed and re-parsed on every call, as Vault's transit keyring does.  Python
cannot promise to wipe memory: the unsealed bytes are dropped at once, and a
cached key lives inside OpenSSL's key object until it expires or the key is
revoked or destroyed.  Use an HSM or cloud KMS where that matters.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from qkms.crypto import suite_for
from qkms.crypto.base import PrivateKey
from qkms.errors import KeyNotFoundError
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import ProviderType
from qkms.store.sealed import SealedStore

from .base import Capability, CreatedKey, KeyHandle, ProviderHealth

MATERIAL = "material"


class LocalDevProvider:
    type = ProviderType.LOCAL_DEV

    def __init__(self, store: SealedStore, cache_seconds: float = 60.0) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, PrivateKey]] = {}

    def capability(self, algorithm: AlgorithmInfo) -> Capability:
        return Capability.SOFTWARE

    # -- creation ----------------------------------------------------------
    async def create(self, key_id: str, algorithm: AlgorithmInfo) -> CreatedKey:
        suite = suite_for(algorithm)
        private = suite.generate()
        public = suite.load_private(private).public()
        record = {"algorithm": algorithm.name, "private": base64.b64encode(private).decode()}
        await asyncio.to_thread(self.store.put_json, MATERIAL, key_id, record)
        return CreatedKey(ref={"record": f"{MATERIAL}/{key_id}"},
                          public_key=public.raw() if public else None,
                          mode=Capability.SOFTWARE)

    async def new_version(self, previous: KeyHandle, key_id: str,
                          algorithm: AlgorithmInfo) -> CreatedKey:
        return await self.create(key_id, algorithm)

    async def destroy(self, key: KeyHandle) -> None:
        self.forget(key.key_id)
        await asyncio.to_thread(self.store.delete, MATERIAL, key.key_id)

    def forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)

    # -- private operations ------------------------------------------------
    def _load_sync(self, key: KeyHandle) -> PrivateKey:
        record: dict[str, Any] | None = self.store.get_json(MATERIAL, key.key_id)
        if record is None:
            raise KeyNotFoundError(key.key_id)
        return suite_for(key.algorithm).load_private(base64.b64decode(record["private"]))

    async def _load(self, key: KeyHandle) -> PrivateKey:
        now = time.monotonic()
        hit = self._cache.get(key.key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        # A miss reads the record store, which may be the Kubernetes API: off the loop.
        loaded = await asyncio.to_thread(self._load_sync, key)
        if self.cache_seconds > 0:
            self._cache[key.key_id] = (now + self.cache_seconds, loaded)
        return loaded

    async def sign(self, key: KeyHandle, data: bytes) -> bytes:
        return (await self._load(key)).sign(data)

    async def encrypt(self, key: KeyHandle, plaintext: bytes, aad: bytes) -> bytes:
        return (await self._load(key)).encrypt(plaintext, aad)

    async def decrypt(self, key: KeyHandle, ciphertext: bytes, aad: bytes) -> bytes:
        return (await self._load(key)).decrypt(ciphertext, aad)

    async def decapsulate(self, key: KeyHandle, ciphertext: bytes) -> bytes:
        return (await self._load(key)).decapsulate(ciphertext)

    async def derive(self, key: KeyHandle, info: bytes, length: int,
                     salt: bytes | None) -> bytes:
        return (await self._load(key)).derive(info, length, salt)

    async def health(self) -> ProviderHealth:
        try:
            count = len(await asyncio.to_thread(self.store.list, MATERIAL))
        except OSError as exc:
            return ProviderHealth("unhealthy", {"store": self.store.records.describe(),
                                                "error": type(exc).__name__})
        return ProviderHealth("healthy", {"store": self.store.records.describe(),
                                          "versions": count, "cached": len(self._cache)})

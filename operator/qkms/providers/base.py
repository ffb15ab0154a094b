"""The one protocol every key provider implements.

A provider holds private material and performs private operations.  Public
operations (verify, encapsulate, public-key encrypt) run in software against
the public key recorded at creation, which is equivalent and saves a round
trip.  ``ref`` is the provider's opaque, JSON-serializable handle that the
catalog persists; it never contains plaintext private material.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import ProviderType


class Capability(StrEnum):
    NATIVE = "native"  # generated and held inside the provider, non-exportable
    ENVELOPE = "envelope"  # generated in software, stored wrapped by a provider key
    SOFTWARE = "software"  # LOCAL_DEV: generated in software, sealed under the KEK
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class KeyHandle:
    key_id: str
    algorithm: AlgorithmInfo
    ref: dict[str, Any]


@dataclass(frozen=True)
class CreatedKey:
    ref: dict[str, Any]
    public_key: bytes | None
    mode: Capability


@dataclass(frozen=True)
class ProviderHealth:
    status: str  # healthy | degraded | unhealthy
    detail: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    type: ProviderType

    def capability(self, algorithm: AlgorithmInfo) -> Capability: ...

    async def create(self, key_id: str, algorithm: AlgorithmInfo) -> CreatedKey: ...

    async def import_key(self, key_id: str, algorithm: AlgorithmInfo,
                         private: bytes) -> CreatedKey:
        """Bring your own key: native import where the provider can, envelope otherwise."""
        ...

    async def new_version(self, previous: KeyHandle, key_id: str,
                          algorithm: AlgorithmInfo) -> CreatedKey: ...

    async def sign(self, key: KeyHandle, data: bytes, *, prehashed: bool = False,
                   pkcs1v15: bool = False) -> bytes:
        """DER for ECDSA.  ``prehashed`` (ECDSA only; the service refuses it otherwise):
        ``data`` is a 32-byte digest to sign as given.  ``pkcs1v15`` (RSA only): an
        RSASSA-PKCS1-v1_5 SHA-256 signature instead of PSS."""
        ...

    async def sign_many(self, key: KeyHandle, messages: list[bytes]) -> list[bytes]:
        """``sign`` of every message with one key, in order (a batch): the key loaded
        once and the signatures made as cheaply as the provider can."""
        ...

    async def encrypt(self, key: KeyHandle, plaintext: bytes, aad: bytes) -> bytes: ...

    async def decrypt(self, key: KeyHandle, ciphertext: bytes, aad: bytes) -> bytes: ...

    async def decapsulate(self, key: KeyHandle, ciphertext: bytes) -> bytes: ...

    async def derive(self, key: KeyHandle, info: bytes, length: int,
                     salt: bytes | None) -> bytes: ...

    async def destroy(self, key: KeyHandle) -> None: ...

    async def schedule_destroy(self, key: KeyHandle, days: int) -> None:
        """The service scheduled deletion in ``days`` (AWS ScheduleKeyDeletion, say)."""
        ...

    async def cancel_destroy(self, key: KeyHandle) -> None:
        """The service cancelled a scheduled deletion."""
        ...

    async def retire(self, key: KeyHandle) -> None:
        """The version no longer verifies or decrypts (retired or revoked): a provider
        with its own notion of that (Vault's min_decryption_version) applies it."""
        ...

    async def leftovers(self, key_id: str, algorithm: AlgorithmInfo,
                        previous: KeyHandle | None) -> list[KeyHandle]:
        """What a create (``previous`` None) or ``new_version(previous, key_id)`` cut short
        made, found by the name, tag or label the provider gives every key (``key_id``):
        the sweep of open intents (store/intents.py) destroys each."""
        ...

    def forget(self, key_id: str) -> None:
        """Drop any cached private material for ``key_id`` (after revoke or destroy)."""
        ...

    async def health(self) -> ProviderHealth: ...

"""Native or envelope, decided in one place for every provider that holds keys of both kinds.

A key version is *native* when it lives inside the provider (a KMS key, a transit key, a
Key Vault key, token objects) and *envelope* when its material was generated in software
and is kept wrapped by a provider key (``software.SoftwareKeys``).  Which one a new
version becomes is ``capabilities``' table; which one an existing version is can be read
from its ref alone, because only a native ref carries the provider's own handle
(``NATIVE_REF``: ``kms_key``, ``transit_key``, ``name`` or ``label``).

``NativeOrEnvelope`` implements the whole ``Provider`` protocol by routing each call:

- ``create``, ``new_version``: native when the table says so (``tries_native``), through
  ``native_create``, which may still decline (return None: AWS's first try of an
  algorithm the endpoint refuses); envelope otherwise, the ref completed by
  ``envelope_ref``.  ``import_key`` is always envelope: no provider imports natively yet.
- ``sign``, ``encrypt``, ``decrypt``: ``native_sign``... for a native version, the
  envelope's software operation otherwise.  ``decapsulate`` and ``derive`` are always
  envelope: no provider holds a KEM or HKDF key natively.
- ``destroy``, ``retire``, ``schedule_destroy``, ``cancel_destroy``: the ``native_``
  hook for a native version; for an envelope version the record is deleted at
  ``destroy``, cached material dropped at ``retire``, and the deletion window is the
  service's alone.
- ``leftovers``: the envelope record named by the key ID, then ``native_leftovers``.

A subclass (``aws``, ``vault``, ``azure``, ``hsm``) thus holds only its SDK calls for
native keys, the wrapper its envelope records use, and its health check.

Why a base class rather than a wrapper around two providers: the envelope wrapper of each
provider encrypts with that provider's own client (KMS Encrypt, transit, wrapKey, the
token's AES key), so the native half and the envelope half share one client, one
deadline and one error mapping; a wrapper would pass them between two objects.  The
routing methods are the protocol's own names, so the service, the tests and the fault
injection (``tests/support/failpoints.py`` patches ``VaultProvider.new_version``) keep
calling the provider they always did.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from qkms.errors import OperationNotAllowedError
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import ProviderType
from qkms.store.sealed import SealedStore

from . import capabilities
from .base import Capability, CreatedKey, KeyHandle, ProviderHealth
from .software import TURN, SoftwareKeys, Wrapper


class NativeOrEnvelope(ABC):
    type: ClassVar[ProviderType]
    NATIVE_REF: ClassVar[str]  # the ref field only a native version has

    def __init__(self, store: SealedStore, wrapper: Wrapper, cache_seconds: float) -> None:
        self.envelope = SoftwareKeys(store, wrapper, Capability.ENVELOPE, cache_seconds)

    def capability(self, algorithm: AlgorithmInfo) -> Capability:
        return capabilities.capability(self.type, algorithm)

    def tries_native(self, algorithm: AlgorithmInfo) -> bool:
        """Whether a new version of ``algorithm`` is first tried natively."""
        return self.capability(algorithm) is Capability.NATIVE

    def is_native(self, key: KeyHandle) -> bool:
        return self.NATIVE_REF in key.ref

    def sign_only(self, key: KeyHandle, what: str, why: str) -> OperationNotAllowedError:
        """The refusal to decrypt with a native RSA key (``what``: "KMS key"...) where the
        provider's OAEP cannot take the label qkms binds (``why``)."""
        return OperationNotAllowedError(
            f"{key.key_id} is a native {key.algorithm.name} {what}: {why}; use an envelope "
            f"algorithm for RSA encryption on {self.type.value}")

    # -- creation ------------------------------------------------------------------------
    async def create(self, key_id: str, algorithm: AlgorithmInfo) -> CreatedKey:
        return await self._new(key_id, algorithm, None)

    async def new_version(self, previous: KeyHandle, key_id: str,
                          algorithm: AlgorithmInfo) -> CreatedKey:
        return await self._new(key_id, algorithm, previous)

    async def import_key(self, key_id: str, algorithm: AlgorithmInfo,
                         private: bytes) -> CreatedKey:
        """Imported material is held by envelope: wrapped like generated material."""
        return self._enveloped(await self.envelope.import_key(key_id, algorithm, private),
                               key_id, None)

    async def _new(self, key_id: str, algorithm: AlgorithmInfo,
                   previous: KeyHandle | None) -> CreatedKey:
        if self.tries_native(algorithm):
            created = await self.native_create(key_id, algorithm, previous)
            if created is not None:
                return created
        return self._enveloped(await self.envelope.create(key_id, algorithm), key_id, previous)

    def _enveloped(self, created: CreatedKey, key_id: str,
                   previous: KeyHandle | None) -> CreatedKey:
        extra = self.envelope_ref(key_id, previous)
        if not extra:
            return created
        return CreatedKey(ref={**created.ref, **extra}, public_key=created.public_key,
                          mode=created.mode)

    @abstractmethod
    async def native_create(self, key_id: str, algorithm: AlgorithmInfo,
                            previous: KeyHandle | None) -> CreatedKey | None:
        """A native version named ``key_id``: a new key (``previous`` None), or the next
        version after ``previous``.  None: held by envelope after all."""

    def envelope_ref(self, key_id: str, previous: KeyHandle | None) -> dict[str, Any]:
        """What the provider adds to an envelope version's ref (AWS: its alias)."""
        return {}

    # -- operations ----------------------------------------------------------------------
    async def sign(self, key: KeyHandle, data: bytes, *, prehashed: bool = False,
                   pkcs1v15: bool = False) -> bytes:
        if self.is_native(key):
            return await self.native_sign(key, data, prehashed=prehashed, pkcs1v15=pkcs1v15)
        return await self.envelope.sign(key, data, prehashed=prehashed, pkcs1v15=pkcs1v15)

    async def sign_many(self, key: KeyHandle, messages: list[bytes]) -> list[bytes]:
        if not self.is_native(key):
            return await self.envelope.sign_many(key, messages)
        out: list[bytes] = []
        for start in range(0, len(messages), TURN):  # a turn's requests in flight at once
            out += await asyncio.gather(*(self.native_sign(key, message, prehashed=False,
                                                           pkcs1v15=False)
                                          for message in messages[start:start + TURN]))
        return out

    async def encrypt(self, key: KeyHandle, plaintext: bytes, aad: bytes) -> bytes:
        if self.is_native(key):
            return await self.native_encrypt(key, plaintext, aad)
        return await self.envelope.encrypt(key, plaintext, aad)

    async def decrypt(self, key: KeyHandle, ciphertext: bytes, aad: bytes) -> bytes:
        if self.is_native(key):
            return await self.native_decrypt(key, ciphertext, aad)
        return await self.envelope.decrypt(key, ciphertext, aad)

    async def decapsulate(self, key: KeyHandle, ciphertext: bytes) -> bytes:
        return await self.envelope.decapsulate(key, ciphertext)  # KEMs are envelope keys

    async def derive(self, key: KeyHandle, info: bytes, length: int,
                     salt: bytes | None) -> bytes:
        return await self.envelope.derive(key, info, length, salt)  # so is HKDF

    @abstractmethod
    async def native_sign(self, key: KeyHandle, data: bytes, *, prehashed: bool,
                          pkcs1v15: bool) -> bytes: ...

    async def native_encrypt(self, key: KeyHandle, plaintext: bytes, aad: bytes) -> bytes:
        """Only symmetric keys are encrypted by the provider (the service encrypts to a
        public key itself): a provider without native AEAD keys never gets here."""
        raise OperationNotAllowedError(
            f"{self.type.value} holds no native {key.algorithm.name} key that encrypts")

    async def native_decrypt(self, key: KeyHandle, ciphertext: bytes, aad: bytes) -> bytes:
        raise OperationNotAllowedError(
            f"{self.type.value} holds no native {key.algorithm.name} key that decrypts")

    # -- lifecycle -----------------------------------------------------------------------
    async def destroy(self, key: KeyHandle) -> None:
        if self.is_native(key):
            await self.native_destroy(key)
        else:
            await self.envelope.destroy(key)

    async def retire(self, key: KeyHandle) -> None:
        """Cached material goes; a native version is also fenced where the provider can."""
        self.forget(key.key_id)
        if self.is_native(key):
            await self.native_retire(key)

    async def schedule_destroy(self, key: KeyHandle, days: int) -> None:
        """An envelope record stays until ``destroy``: the window is the service's."""
        if self.is_native(key):
            await self.native_schedule_destroy(key, days)

    async def cancel_destroy(self, key: KeyHandle) -> None:
        if self.is_native(key):
            await self.native_cancel_destroy(key)

    async def leftovers(self, key_id: str, algorithm: AlgorithmInfo,
                        previous: KeyHandle | None) -> list[KeyHandle]:
        """The envelope record named ``key_id``, then what ``native_leftovers`` finds."""
        found = await self.envelope.leftovers(key_id, algorithm)
        return found + await self.native_leftovers(key_id, algorithm, previous)

    def forget(self, key_id: str) -> None:
        self.envelope.forget(key_id)

    @abstractmethod
    async def native_destroy(self, key: KeyHandle) -> None: ...

    async def native_retire(self, key: KeyHandle) -> None:
        """By default the service alone refuses a retired version."""
        return None

    async def native_schedule_destroy(self, key: KeyHandle, days: int) -> None:
        """By default the service alone keeps the deletion window."""
        return None

    async def native_cancel_destroy(self, key: KeyHandle) -> None:
        """Nothing to undo by default."""
        return None

    @abstractmethod
    async def native_leftovers(self, key_id: str, algorithm: AlgorithmInfo,
                               previous: KeyHandle | None) -> list[KeyHandle]:
        """The native keys or versions a cut-short create or ``new_version(previous,
        key_id)`` made, found by the name, tag or label that carries ``key_id``."""

    @abstractmethod
    async def health(self) -> ProviderHealth: ...

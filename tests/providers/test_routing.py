"""Native or envelope, routed once (``providers.routing``): checked with a fake provider
whose native half only records what it was asked, next to a real envelope."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from qkms.crypto import suite_for
from qkms.errors import OperationNotAllowedError
from qkms.model.algorithms import resolve_algorithm
from qkms.model.enums import ProviderType
from qkms.providers import MODULES
from qkms.providers.base import Capability, CreatedKey, KeyHandle, ProviderHealth
from qkms.providers.routing import NativeOrEnvelope
from qkms.providers.software import KekWrapper
from qkms.store.kek import Sealer
from qkms.store.records import MemoryRecordStore
from qkms.store.sealed import SealedStore

NATIVE = resolve_algorithm("ECDSA-P256")  # native on HASHICORP_VAULT (capabilities.NATIVE)
ENVELOPE = resolve_algorithm("ECDSA-secp256k1")  # envelope there


class Fake(NativeOrEnvelope):
    type = ProviderType.HASHICORP_VAULT
    NATIVE_REF = "fake"

    def __init__(self, decline: bool = False) -> None:
        super().__init__(SealedStore(MemoryRecordStore(), Sealer(bytes(32))), KekWrapper(), 0)
        self.decline = decline
        self.asked: list[tuple[str, Any]] = []

    async def native_create(self, key_id: str, algorithm: Any,
                            previous: KeyHandle | None) -> CreatedKey | None:
        self.asked.append(("create", previous.key_id if previous else None))
        if self.decline:
            return None
        return CreatedKey(ref={"fake": key_id}, public_key=None, mode=Capability.NATIVE)

    def envelope_ref(self, key_id: str, previous: KeyHandle | None) -> dict[str, Any]:
        return {"first": previous.key_id if previous else key_id}

    async def native_sign(self, key: KeyHandle, data: bytes, *, prehashed: bool,
                          pkcs1v15: bool) -> bytes:
        self.asked.append(("sign", (prehashed, pkcs1v15)))
        return b"native"

    async def native_destroy(self, key: KeyHandle) -> None:
        self.asked.append(("destroy", key.key_id))

    async def native_retire(self, key: KeyHandle) -> None:
        self.asked.append(("retire", key.key_id))

    async def native_leftovers(self, key_id: str, algorithm: Any,
                               previous: KeyHandle | None) -> list[KeyHandle]:
        return [KeyHandle(key_id, algorithm, {"fake": key_id})]

    async def health(self) -> ProviderHealth:
        return ProviderHealth("healthy")


def test_every_provider_with_native_keys_routes_through_the_one_base():
    for provider_type, module in MODULES.items():
        if provider_type is ProviderType.LOCAL_DEV:
            continue
        classes = [c for c in vars(importlib.import_module(module)).values()
                   if isinstance(c, type) and getattr(c, "type", None) is provider_type]
        assert classes and all(issubclass(c, NativeOrEnvelope) for c in classes), module


async def test_the_table_decides_creation_and_the_ref_decides_every_use():
    fake = Fake()
    native = await fake.create("key_dev_01", NATIVE)
    assert native.mode is Capability.NATIVE and fake.asked == [("create", None)]
    enveloped = await fake.create("key_dev_02", ENVELOPE)
    assert enveloped.mode is Capability.ENVELOPE and enveloped.ref["first"] == "key_dev_02"
    assert len(fake.asked) == 1  # the envelope algorithm never reached the native half

    native_key = KeyHandle("key_dev_01", NATIVE, native.ref)
    envelope_key = KeyHandle("key_dev_02", ENVELOPE, enveloped.ref)
    assert await fake.sign(native_key, b"m", prehashed=True) == b"native"
    assert fake.asked[-1] == ("sign", (True, False))
    assert len(await fake.sign(envelope_key, b"m")) > 8  # a real signature, from software

    rotated = await fake.new_version(native_key, "key_dev_03", NATIVE)
    assert rotated.mode is Capability.NATIVE and fake.asked[-1] == ("create", "key_dev_01")

    await fake.retire(native_key)
    await fake.schedule_destroy(envelope_key, 7)  # the window is the service's: nothing
    await fake.destroy(native_key)
    assert fake.asked[-2:] == [("retire", "key_dev_01"), ("destroy", "key_dev_01")]
    assert [k.ref for k in await fake.leftovers("key_dev_02", ENVELOPE, None)] == [
        {"record": "material/key_dev_02"}, {"fake": "key_dev_02"}]
    await fake.destroy(envelope_key)
    assert await fake.leftovers("key_dev_02", ENVELOPE, None) == [
        KeyHandle("key_dev_02", ENVELOPE, {"fake": "key_dev_02"})]


async def test_a_declined_native_create_and_an_import_are_envelope_keys():
    fake = Fake(decline=True)
    previous = KeyHandle("key_dev_01", NATIVE, {"fake": "key_dev_01"})
    created = await fake.new_version(previous, "key_dev_02", NATIVE)
    assert created.mode is Capability.ENVELOPE and created.ref["first"] == "key_dev_01"
    imported = await fake.import_key("key_dev_03", NATIVE, suite_for(NATIVE).generate())
    assert imported.mode is Capability.ENVELOPE and imported.public_key


async def test_native_keys_without_a_native_operation_are_refused_clearly():
    fake = Fake()
    key = KeyHandle("key_dev_01", NATIVE, {"fake": "key_dev_01"})
    with pytest.raises(OperationNotAllowedError, match="no native ECDSA-P256 key that decrypts"):
        await fake.decrypt(key, b"c", b"")

"""HASHICORP_VAULT: keys held by the transit engine of Vault (or OpenBao), through hvac.

Native algorithms (``capabilities.NATIVE``) become non-exportable transit keys, one per
qkms key, named after the key ID of its first version.  A rotation is a transit rotation,
and each version's ref names its transit key and version, which sign and encrypt pass
explicitly; a migration to another algorithm starts a new transit key.  Everything else is
an envelope key: generated in software and stored wrapped by transit encrypt under one
aes256-gcm96 key (``VAULT_WRAP_KEY``, default ``qkms-wrap``, created if missing), with the
version's key ID as associated data.

Vault's own fences follow the qkms lifecycle, as defence in depth (the service refuses
first):

- ``retire`` raises ``min_decryption_version`` to the lowest version still usable, never
  past one in grace.  Which versions are spent is kept in a sealed record per transit key,
  because a retire call names one version and Vault keeps no per-version state.  Vault
  cannot fence its latest version, so a wholly revoked key is refused by qkms alone.
- ``min_encryption_version`` follows the active version: the first sign or encrypt under a
  version (which the service only allows once the rotation is committed) raises it, so an
  aborted rotation never fences the version still in use.
- ``schedule_destroy`` soft-deletes the transit key on OpenBao (every operation refused
  until ``cancel_destroy`` restores it); HashiCorp Vault has no soft delete, so there the
  window is kept by qkms alone.  ``destroy`` deletes the transit key, setting
  ``deletion_allowed`` only then, once its last version is destroyed.

Every call runs in a worker thread under a deadline (``VAULT_CLIENT_TIMEOUT``, default 5 s).
Refused connections, timeouts, 5xx answers and permission errors raise
``ProviderUnavailableError("HASHICORP_VAULT at <address>: <reason>")``; the token never
appears in errors or logs.  Operators should set ``<mount>/config/keys disable_upsert=true``
so that an encrypt against a deleted transit key fails instead of creating a new one.
Known gap: native RSA keys sign only.  qkms's RSA-OAEP binds the token's context as the
OAEP label, which transit decryption does not take, so DECRYPT is refused with that reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from hvac import exceptions as vault_errors

from qkms.config import Settings
from qkms.crypto import InvalidCiphertext, suite_for
from qkms.errors import ProviderUnavailableError, RecordCorruptError
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import Family, ProviderType
from qkms.store.sealed import SealedStore

from .base import Capability, CreatedKey, KeyHandle, ProviderHealth
from .routing import NativeOrEnvelope
from .vault_client import TransitCalls, VaultOptions

# qkms algorithm -> transit key type (hvac validates types client-side and does not know
# ML-DSA, so requests go through the generic read/write calls).
TRANSIT_TYPES: dict[str, str] = {
    "Ed25519": "ed25519", "ECDSA-P256": "ecdsa-p256", "RSA-2048": "rsa-2048",
    "RSA-4096": "rsa-4096", "AES-256-GCM": "aes256-gcm96",
    "ChaCha20-Poly1305": "chacha20-poly1305", "ML-DSA-44": "mldsa-44",
    "ML-DSA-65": "mldsa-65", "ML-DSA-87": "mldsa-87",
}
STATE = "vault-transit"  # sealed record kind: spent and destroyed versions per transit key



def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def public_raw(algorithm: AlgorithmInfo, text: str) -> bytes:
    """Vault's public key (PEM for ECDSA and RSA, base64 raw otherwise) in qkms's encoding."""
    if text.startswith("-----BEGIN"):
        key = load_pem_public_key(text.encode())
        ecdsa = algorithm.name.startswith("ECDSA")
        raw = key.public_bytes(Encoding.X962 if ecdsa else Encoding.DER,
                               PublicFormat.UncompressedPoint if ecdsa
                               else PublicFormat.SubjectPublicKeyInfo)
    else:
        raw = base64.b64decode(text)
    suite_for(algorithm).load_public(raw)  # Vault returned a key of the algorithm asked for
    return raw


def _sign_params(algorithm: AlgorithmInfo, pkcs1v15: bool = False) -> dict[str, Any]:
    """ECDSA: DER over SHA-256; RSA: PSS-SHA256 with a 32-byte salt, or PKCS#1 v1.5
    SHA-256 when asked; EdDSA, ML-DSA: pure."""
    if algorithm.name.startswith("ECDSA"):
        return {"hash_algorithm": "sha2-256", "marshaling_algorithm": "asn1"}
    if algorithm.family is Family.RSA and pkcs1v15:
        return {"hash_algorithm": "sha2-256", "signature_algorithm": "pkcs1v15"}
    if algorithm.family is Family.RSA:
        return {"hash_algorithm": "sha2-256", "signature_algorithm": "pss",
                "salt_length": "hash"}
    return {}


def _unprefix(value: str, version: int) -> bytes:
    prefix = f"vault:v{version}:"
    if not value.startswith(prefix):
        raise InvalidCiphertext(f"not made by transit version {version}")
    return base64.b64decode(value[len(prefix):])


class TransitWrapper:
    """Envelope wrapping by transit encrypt; the blob names its mount and key, so changing
    ``VAULT_WRAP_KEY`` later leaves older records readable."""

    name = "vault-transit"

    def __init__(self, provider: VaultProvider) -> None:
        self.provider = provider

    async def wrap(self, key_id: str, plaintext: bytes) -> bytes:
        p = self.provider
        mount, key = p.options.mount, p.options.wrap_key
        await p.ensure_wrap_key()
        answer = await p.call(p.client.write_data, f"{mount}/encrypt/{key}", data={
            "plaintext": _b64(plaintext), "associated_data": _b64(key_id.encode())})
        blob = {"mount": mount, "key": key, "ciphertext": answer["data"]["ciphertext"]}
        return json.dumps(blob).encode()

    async def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        p = self.provider
        blob = json.loads(wrapped)
        try:
            answer = await p.call(p.client.write_data, f"{blob['mount']}/decrypt/{blob['key']}",
                                  data={"ciphertext": blob["ciphertext"],
                                        "associated_data": _b64(key_id.encode())},
                                  bad_request=InvalidCiphertext)
        except InvalidCiphertext:
            raise RecordCorruptError(f"material/{key_id}", "Vault could not unwrap it") from None
        return base64.b64decode(answer["data"]["plaintext"])


class VaultProvider(TransitCalls, NativeOrEnvelope):
    """A transit key per native key and a transit version per qkms version, fenced as the
    lifecycle goes (``_fence_encryption``, ``_spend_locked``); envelope records wrapped by
    ``TransitWrapper``."""

    type = ProviderType.HASHICORP_VAULT
    NATIVE_REF = "transit_key"

    def __init__(self, options: VaultOptions, store: SealedStore,
                 cache_seconds: float = 60.0) -> None:
        TransitCalls.__init__(self, options)
        NativeOrEnvelope.__init__(self, store, TransitWrapper(self), cache_seconds)
        self.store = store
        self._locks: dict[str, asyncio.Lock] = {}
        self._fenced: dict[str, int] = {}  # transit key -> min_encryption_version seen
        self._wrap_ready = False

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _read_key(self, mount: str, name: str) -> dict[str, Any] | None:
        answer = await self.call(self.client.read, f"{mount}/keys/{name}")
        return answer["data"] if answer else None

    async def ensure_wrap_key(self) -> None:
        """Create the envelope wrapping key on first use if it does not exist yet."""
        if self._wrap_ready:
            return
        mount, key = self.options.mount, self.options.wrap_key
        info = await self._read_key(mount, key)
        if info is None:
            info = (await self.call(self.client.write_data, f"{mount}/keys/{key}",
                                    data={"type": "aes256-gcm96", "exportable": False}))["data"]
        if info["type"] not in ("aes256-gcm96", "chacha20-poly1305"):
            raise self.unavailable(f"wrapping key {key!r} is {info['type']}, not an AEAD key")
        self._wrap_ready = True

    # -- creation ------------------------------------------------------------------------
    async def native_create(self, key_id: str, algorithm: AlgorithmInfo,
                            previous: KeyHandle | None) -> CreatedKey:
        """The next version of ``previous``'s transit key when it has the same algorithm
        (a transit rotation); otherwise a new transit key named ``key_id``."""
        if (previous is not None and self.is_native(previous)
                and previous.algorithm.name == algorithm.name):
            return await self._rotate(previous, algorithm)
        mount = self.options.mount
        answer = await self.call(self.client.write_data, f"{mount}/keys/{key_id}",
                                 data={"type": TRANSIT_TYPES[algorithm.name],
                                       "exportable": False})
        info = answer["data"]
        if info["type"] != TRANSIT_TYPES[algorithm.name] or info["latest_version"] != 1:
            # Transit "creates" an existing key silently; key IDs are random, so this means
            # someone else's key: refuse it and leave it alone.
            raise self.unavailable(f"transit key {key_id} already exists")
        try:
            public = self._public(algorithm, info, 1)
        except Exception:
            with contextlib.suppress(Exception):  # leave no half-made key behind
                await self._delete_transit(mount, key_id)
            raise
        return CreatedKey(ref=self._ref(mount, key_id, 1), public_key=public,
                          mode=Capability.NATIVE)

    async def _rotate(self, previous: KeyHandle, algorithm: AlgorithmInfo) -> CreatedKey:
        ref = previous.ref
        mount, name = ref["mount"], ref["transit_key"]
        async with self._lock(name):
            answer = await self.call(self.client.write_data, f"{mount}/keys/{name}/rotate",
                                     key_id=previous.key_id)
            info = answer["data"]
            version = int(info["latest_version"])
            try:
                public = self._public(algorithm, info, version)
            except Exception:
                await self._spend_locked(mount, name, version, destroyed=True)  # an orphan
                raise
        return CreatedKey(ref=self._ref(mount, name, version), public_key=public,
                          mode=Capability.NATIVE)

    @staticmethod
    def _ref(mount: str, name: str, version: int) -> dict[str, Any]:
        return {"mount": mount, "transit_key": name, "transit_version": version}

    @staticmethod
    def _public(algorithm: AlgorithmInfo, info: dict[str, Any], version: int) -> bytes | None:
        if algorithm.symmetric:
            return None
        return public_raw(algorithm, info["keys"][str(version)]["public_key"])

    # -- operations ----------------------------------------------------------------------
    @staticmethod
    def _native(key: KeyHandle) -> tuple[str, str, int]:
        ref = key.ref
        return ref["mount"], ref["transit_key"], int(ref["transit_version"])

    async def _fence_encryption(self, mount: str, name: str, version: int) -> None:
        """Raise ``min_encryption_version`` to ``version`` the first time it signs or
        encrypts (it is then the committed active version); never lower it."""
        if self._fenced.get(name, 0) >= version:
            return
        async with self._lock(name):
            info = await self._read_key(mount, name)
            if info is None:
                return
            current = int(info["min_encryption_version"])
            if current < version and not info.get("soft_deleted"):
                await self.call(self.client.write_data, f"{mount}/keys/{name}/config",
                                data={"min_encryption_version": version})
                current = version
            self._fenced[name] = current

    async def native_sign(self, key: KeyHandle, data: bytes, *, prehashed: bool,
                          pkcs1v15: bool) -> bytes:
        mount, name, version = self._native(key)
        await self._fence_encryption(mount, name, version)
        extra = {"prehashed": True} if prehashed else {}  # ECDSA: the input is the digest
        answer = await self.call(self.client.write_data, f"{mount}/sign/{name}", data={
            "input": _b64(data), "key_version": version,
            **_sign_params(key.algorithm, pkcs1v15),
            **extra}, key_id=key.key_id)
        return _unprefix(answer["data"]["signature"], version)

    async def native_encrypt(self, key: KeyHandle, plaintext: bytes, aad: bytes) -> bytes:
        mount, name, version = self._native(key)
        await self._fence_encryption(mount, name, version)
        answer = await self.call(self.client.write_data, f"{mount}/encrypt/{name}", data={
            "plaintext": _b64(plaintext), "associated_data": _b64(aad),
            "key_version": version}, key_id=key.key_id)
        return answer["data"]["ciphertext"].encode()  # "vault:vN:..." is the provider ciphertext

    async def native_decrypt(self, key: KeyHandle, ciphertext: bytes, aad: bytes) -> bytes:
        if not key.algorithm.symmetric:
            raise self.sign_only(key, "transit key", "transit RSA decryption takes no OAEP "
                                 "label, and qkms binds the version and context as one")
        mount, name, version = self._native(key)
        text = ciphertext.decode("ascii", "replace")
        _unprefix(text, version)  # a ciphertext of another transit version is refused here
        answer = await self.call(self.client.write_data, f"{mount}/decrypt/{name}", data={
            "ciphertext": text, "associated_data": _b64(aad)},
            key_id=key.key_id, bad_request=InvalidCiphertext)
        return base64.b64decode(answer["data"]["plaintext"])

    # -- lifecycle -----------------------------------------------------------------------
    async def native_retire(self, key: KeyHandle) -> None:
        native = self._native(key)
        async with self._lock(native[1]):
            await self._spend_locked(*native, destroyed=False)

    async def native_destroy(self, key: KeyHandle) -> None:
        native = self._native(key)
        async with self._lock(native[1]):
            await self._spend_locked(*native, destroyed=True)

    async def _spend_locked(self, mount: str, name: str, version: int, *,
                            destroyed: bool) -> None:
        """Record ``version`` as spent (and destroyed) and apply the fences Vault can hold:
        ``min_decryption_version`` up to the lowest version still usable, and deletion of
        the transit key once every version is destroyed.  Destroyed versions are not
        trimmed one by one: qkms destroys a key's versions together, at the end of the
        key's deletion window."""
        state = await asyncio.to_thread(self.store.get_json, STATE, name) or {}
        spent = set(state.get("spent", [])) | {version}
        gone = set(state.get("destroyed", [])) | ({version} if destroyed else set())
        await asyncio.to_thread(self.store.put_json, STATE, name,
                                {"spent": sorted(spent), "destroyed": sorted(gone)})
        info = await self._read_key(mount, name)
        latest = int(info["latest_version"]) if info else 0
        if info is None or gone >= set(range(1, latest + 1)):
            if info is not None:
                await self._delete_transit(mount, name)
            await asyncio.to_thread(self.store.delete, STATE, name)
            return
        if info.get("soft_deleted"):
            return  # configuration is frozen until restored; deletion still works
        floor = min(next(n for n in range(1, latest + 2) if n not in spent), latest)
        min_dec, min_enc = int(info["min_decryption_version"]), int(info["min_encryption_version"])
        if floor > min_dec:  # Vault wants min_encryption_version >= min_decryption_version
            change = {"min_decryption_version": floor}
            if min_enc and min_enc < floor:
                change["min_encryption_version"] = floor
            await self.call(self.client.write_data, f"{mount}/keys/{name}/config", data=change)

    async def native_leftovers(self, key_id: str, algorithm: AlgorithmInfo,
                               previous: KeyHandle | None) -> list[KeyHandle]:
        """The transit key a create names ``key_id``; and for a rotation, the versions of
        the old version's transit key after it."""
        found: list[KeyHandle] = []
        mount = self.options.mount
        if await self._read_key(mount, key_id) is not None:
            found.append(KeyHandle(key_id, algorithm, self._ref(mount, key_id, 1)))
        if previous is not None and self.is_native(previous):
            mount, name, version = self._native(previous)
            info = await self._read_key(mount, name)
            latest = int(info["latest_version"]) if info else 0
            found += [KeyHandle(key_id, algorithm, self._ref(mount, name, number))
                      for number in range(version + 1, latest + 1)]
        return found

    async def _delete_transit(self, mount: str, name: str) -> None:
        """Allow deletion only now, then delete; a key already gone is fine."""
        def gone(exc: vault_errors.VaultError) -> bool:
            return isinstance(exc, vault_errors.InvalidPath)
        await self.call(self.client.write_data, f"{mount}/keys/{name}/config",
                        data={"deletion_allowed": True}, tolerate=gone)
        await self.call(self.client.delete, f"{mount}/keys/{name}", tolerate=gone)
        self._fenced.pop(name, None)

    @staticmethod
    def _unsupported(exc: vault_errors.VaultError) -> bool:
        """HashiCorp Vault has no soft delete (OpenBao does); restoring twice is harmless."""
        return isinstance(exc, vault_errors.InvalidPath | vault_errors.UnexpectedError)

    async def native_schedule_destroy(self, key: KeyHandle, days: int) -> None:
        """Soft-delete the transit key where the server has soft delete (OpenBao)."""
        mount, name, _ = self._native(key)
        await self.call(self.client.delete, f"{mount}/keys/{name}/soft-delete",
                        tolerate=self._unsupported)

    async def native_cancel_destroy(self, key: KeyHandle) -> None:
        mount, name, _ = self._native(key)
        await self.call(self.client.write_data, f"{mount}/keys/{name}/soft-delete-restore",
                        tolerate=self._unsupported)

    async def health(self) -> ProviderHealth:
        detail: dict[str, Any] = {"address": self.options.address, "mount": self.options.mount}
        try:
            status = await self.call(self.client.sys.read_health_status, method="GET")
            keys = await self.call(self.client.list, f"{self.options.mount}/keys")
        except ProviderUnavailableError as exc:
            return ProviderHealth("unhealthy", {**detail, "error": exc.message})
        if isinstance(status, dict):
            detail["version"] = status.get("version")
        detail["transit_keys"] = len(keys["data"]["keys"]) if keys else 0
        return ProviderHealth("healthy", detail)


def build(settings: Settings, sealed: SealedStore) -> VaultProvider:
    return VaultProvider(VaultOptions.from_options(settings.provider_options), sealed,
                         cache_seconds=settings.key_cache_seconds)

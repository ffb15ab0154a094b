"""AZURE_KEY_VAULT: keys held in Azure Key Vault, used through its keys REST API.

Native (``capabilities.NATIVE[AZURE_KEY_VAULT]``): RSA-2048/4096 (PS256 signatures,
RSA-OAEP-256 decryption), ECDSA-P256 (ES256) and ECDSA-secp256k1 (P-256K, ES256K).
Key Vault signs a SHA-256 digest computed here and returns EC signatures as raw
r||s, which become DER.  AES exists only on Managed HSM, so AES, ChaCha20, HKDF,
Ed25519 and every post-quantum or hybrid algorithm are envelope keys: generated in
software, their material sealed with AES-256-GCM under a fresh data key that Key
Vault wraps (``wrapKey`` RSA-OAEP-256) with a dedicated RSA key, ``qkms-wrap``,
created on first use.

Naming and versions: a qkms version ``key_<env>_<hex>`` maps to the Key Vault key
``key-<env>-<hex>`` (names allow only letters, digits and dashes).  A rotation to the
same algorithm creates a new *version of the same Key Vault key* (create-key on an
existing name); a migration to another algorithm starts a new Key Vault key.  The
ref holds the key name and version, and every operation names the version.

Deletion follows soft delete, because Key Vault cannot delete one version:
``schedule_destroy`` disables the version (it can no longer sign or decrypt) and
tags it ``qkms-state=pending-deletion``; ``cancel_destroy`` enables it again;
``destroy`` disables it for good (tag ``destroyed``) and, once every version of the
Key Vault key is destroyed, deletes the key, which the vault keeps recoverable for
its retention period (``AZURE_PURGE_ON_DESTROY=true`` purges it as well, where the
vault allows purging).  ``retire`` is a no-op: the service refuses retired versions.

RSA decryption and the OAEP label: Key Vault's RSA-OAEP-256 takes no label, so it
decrypts only ciphertexts made with an empty AAD; a ciphertext bound to an AAD is
refused with a clear error rather than reported as tampered.

Credentials, in order: ``AZURE_ACCESS_TOKEN`` (a bearer token used as is, for tests
and for tokens refreshed by something else), ``AZURE_TENANT_ID`` +
``AZURE_CLIENT_ID`` + ``AZURE_CLIENT_SECRET`` (a service principal), else
``DefaultAzureCredential`` (workload identity, managed identity).  Test-only knobs:
``AZURE_CA_BUNDLE`` (the CA file to trust, passed as ``connection_verify``) and
``AZURE_VERIFY_CHALLENGE_RESOURCE=false`` (an emulator on 127.0.0.1 is not under
vault.azure.net).  The SDK blocks, so calls run in worker threads, each bounded by
``AZURE_TIMEOUT`` seconds with few retries, and errors name the vault URL only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    EncryptionAlgorithm,
    KeyWrapAlgorithm,
    SignatureAlgorithm,
)
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qkms.config import Settings
from qkms.crypto.base import InvalidCiphertext
from qkms.errors import (
    InvalidInputError,
    KeyNotFoundError,
    OperationNotAllowedError,
    ProviderUnavailableError,
    RecordCorruptError,
)
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import ProviderType
from qkms.store.sealed import SealedStore

from .azure_client import KeyVaultCalls, credential_for, flag, option
from .azure_client import StaticTokenCredential as StaticTokenCredential  # for callers
from .base import Capability, CreatedKey, KeyHandle, ProviderHealth
from .routing import NativeOrEnvelope

# algorithm -> (key type, size or curve, signature algorithm)
_NATIVE: dict[str, tuple[str, int | str, SignatureAlgorithm]] = {
    "RSA-2048": ("RSA", 2048, SignatureAlgorithm.ps256),
    "RSA-4096": ("RSA", 4096, SignatureAlgorithm.ps256),
    "ECDSA-P256": ("EC", "P-256", SignatureAlgorithm.es256),
    "ECDSA-secp256k1": ("EC", "P-256K", SignatureAlgorithm.es256_k),
}
_OPS = {"RSA": ["sign", "verify", "encrypt", "decrypt"], "EC": ["sign", "verify"]}
_WRAP_FORMAT = 1


def azure_name(key_id: str) -> str:
    """``key_dev_0a1b`` -> ``key-dev-0a1b``: Key Vault names allow [0-9a-zA-Z-] only."""
    return key_id.replace("_", "-")


class AzureKeyVaultProvider(KeyVaultCalls, NativeOrEnvelope):
    type = ProviderType.AZURE_KEY_VAULT
    NATIVE_REF = "name"

    def __init__(self, client: KeyClient, store: SealedStore, *, wrap_name: str = "qkms-wrap",
                 timeout: float = 10.0, purge: bool = False, hardware: bool = False,
                 cache_seconds: float = 60.0) -> None:
        self.client = client
        self.vault_url = client.vault_url
        self.wrap_name = wrap_name
        self.timeout = timeout
        self.purge = purge
        self.hardware = hardware  # RSA-HSM / EC-HSM keys (Premium vaults)
        super().__init__(store, AzureWrapper(self), cache_seconds)
        self._crypto: dict[tuple[str, str], CryptographyClient] = {}

    # -- creation ----------------------------------------------------------------------
    async def native_create(self, key_id: str, algorithm: AlgorithmInfo,
                            previous: KeyHandle | None) -> CreatedKey:
        """Same algorithm as ``previous``: a new version of the same Key Vault key; else a
        new key."""
        name = azure_name(key_id)
        if (previous is not None and self.is_native(previous)
                and previous.algorithm.name == algorithm.name):
            name = previous.ref["name"]
        return await self._create_native(name, key_id, algorithm.name)

    async def _create_native(self, name: str, key_id: str, algorithm: str) -> CreatedKey:
        kty, size, _ = _NATIVE[algorithm]
        params: dict[str, Any] = {"size": size} if kty == "RSA" else {"curve": size}
        key = await self.call(lambda: self.client.create_key(
            name, f"{kty}-HSM" if self.hardware else kty, key_operations=_OPS[kty],
            tags=_tags(key_id, "active"), **params))
        return CreatedKey(ref={"name": name, "version": key.properties.version},
                          public_key=_public_bytes(key.key), mode=Capability.NATIVE)

    # -- operations --------------------------------------------------------------------
    async def native_sign(self, key: KeyHandle, data: bytes, *, prehashed: bool,
                          pkcs1v15: bool) -> bytes:
        client = self.crypto(key.ref["name"], key.ref["version"])
        algorithm = _NATIVE[key.algorithm.name][2]
        if pkcs1v15:  # RSA only: RS256 is RSASSA-PKCS1-v1_5 over the SHA-256 digest
            algorithm = SignatureAlgorithm.rs256
        digest = bytes(data) if prehashed else hashlib.sha256(data).digest()
        signature = (await self.call(lambda: client.sign(algorithm, digest),
                                     key_id=key.key_id)).signature
        if algorithm in (SignatureAlgorithm.ps256, SignatureAlgorithm.rs256):
            return signature
        half = len(signature) // 2  # JWS form r || s
        return encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                    int.from_bytes(signature[half:], "big"))

    async def native_decrypt(self, key: KeyHandle, ciphertext: bytes, aad: bytes) -> bytes:
        if aad:
            raise OperationNotAllowedError(
                "AZURE_KEY_VAULT RSA-OAEP-256 takes no OAEP label, so it cannot decrypt a "
                f"ciphertext bound to a context or key version ({key.key_id})")
        client = self.crypto(key.ref["name"], key.ref["version"])
        result = await self.call(lambda: client.decrypt(EncryptionAlgorithm.rsa_oaep_256,
                                                        ciphertext),
                                 key_id=key.key_id, bad_input=True)
        return result.plaintext

    # -- lifecycle ---------------------------------------------------------------------
    async def _mark(self, key: KeyHandle, enabled: bool, state: str) -> bool:
        """Set one version's enabled flag and state tag; False if the key is gone."""
        name, version = key.ref["name"], key.ref["version"]
        try:
            await self.call(lambda: self.client.update_key_properties(
                name, version, enabled=enabled, tags=_tags(key.key_id, state)),
                key_id=key.key_id)
        except KeyNotFoundError:
            return False
        return True

    async def native_schedule_destroy(self, key: KeyHandle, days: int) -> None:
        """Disable the version now; the service destroys it when the window ends."""
        await self._mark(key, False, "pending-deletion")

    async def native_cancel_destroy(self, key: KeyHandle) -> None:
        await self._mark(key, True, "active")

    async def native_destroy(self, key: KeyHandle) -> None:
        """Disable the version for good; delete the Key Vault key with its last version.

        Idempotent, so a retry after a partial failure finishes the job: a key that is
        already deleted is only purged (when purging is on).
        """
        self.forget(key.key_id)
        name = key.ref["name"]
        if await self._mark(key, False, "destroyed"):
            def delete_when_all_destroyed() -> bool:
                versions = list(self.client.list_properties_of_key_versions(name))
                if any((v.tags or {}).get("qkms-state") != "destroyed" for v in versions):
                    return False
                poller = self.client.begin_delete_key(name)
                if self.purge:
                    poller.wait(timeout=self.timeout)
                return True
            try:
                if not await self.call(delete_when_all_destroyed, key_id=key.key_id):
                    return
            except KeyNotFoundError:
                pass  # deleted meanwhile
        if self.purge:
            try:
                await self.call(lambda: self.client.purge_deleted_key(name), key_id=key.key_id)
            except KeyNotFoundError:
                pass  # purged already, or never soft-deleted

    async def native_leftovers(self, key_id: str, algorithm: AlgorithmInfo,
                               previous: KeyHandle | None) -> list[KeyHandle]:
        """The Key Vault versions tagged with ``key_id``: of the key a create names after
        it, or of the old version's key for a rotation."""
        found: list[KeyHandle] = []
        names = {azure_name(key_id)}
        if previous is not None and self.is_native(previous):
            names.add(previous.ref["name"])
        for name in sorted(names):
            def versions_of(name: str = name) -> list[Any]:
                return list(self.client.list_properties_of_key_versions(name))
            try:
                versions = await self.call(versions_of, key_id=key_id)
            except KeyNotFoundError:
                continue
            found += [KeyHandle(key_id, algorithm, {"name": name, "version": v.version})
                      for v in versions if (v.tags or {}).get("qkms-key-id") == key_id]
        return found

    async def health(self) -> ProviderHealth:
        detail: dict[str, Any] = {"vault": self.vault_url, "wrap_key": self.wrap_name}
        try:
            await self.call(lambda: self.client.get_key(self.wrap_name), key_id=self.wrap_name)
            detail["wrap_key_present"] = True
        except KeyNotFoundError:
            detail["wrap_key_present"] = False  # created with the first envelope key
        except ProviderUnavailableError as exc:
            return ProviderHealth("unhealthy", {**detail, "error": exc.message})
        return ProviderHealth("healthy", {**detail, "cached": len(self.envelope._cache)})


class AzureWrapper:
    """Envelope material: AES-256-GCM under a fresh data key that Key Vault wraps.

    Record bytes: format (1) | len(name/version) (2) | name/version | len(wrapped) (2)
    | wrapped data key | nonce (12) | ciphertext+tag; the key ID is the GCM AAD.  A
    data key rather than wrapping the material itself because RSA-OAEP carries at most
    a few hundred bytes and a Falcon-1024 private key is 2305.  The wrapping key's
    version is recorded, so rotating ``qkms-wrap`` leaves older records readable.
    """

    name = "azure-wrapkey-rsa-oaep-256"

    def __init__(self, provider: AzureKeyVaultProvider) -> None:
        self.provider = provider
        self._current: tuple[str, str] | None = None
        self._lock = asyncio.Lock()

    async def _wrapping_key(self) -> tuple[str, str]:
        """(name, version) of the wrapping key, created (RSA-3072) if missing."""
        async with self._lock:
            if self._current is None:
                p = self.provider

                def find_or_create() -> Any:
                    try:
                        return p.client.get_key(p.wrap_name)
                    except ResourceNotFoundError:
                        return p.client.create_rsa_key(
                            p.wrap_name, size=3072, hardware_protected=p.hardware,
                            key_operations=["wrapKey", "unwrapKey"],
                            tags={"managed-by": "qkms", "purpose": "envelope-wrapping"})
                key = await p.call(find_or_create)
                self._current = (p.wrap_name, key.properties.version)
            return self._current

    async def wrap(self, key_id: str, plaintext: bytes) -> bytes:
        name, version = await self._wrapping_key()
        data_key, nonce = AESGCM.generate_key(256), os.urandom(12)
        body = AESGCM(data_key).encrypt(nonce, plaintext, key_id.encode())
        client = self.provider.crypto(name, version)
        wrapped = (await self.provider.call(
            lambda: client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, data_key))).encrypted_key
        # The SDK wraps locally with the public key; unwrapping in the vault proves, before
        # anything is stored, that the wrapping key exists, is enabled and can unwrap it.
        back = (await self.provider.call(
            lambda: client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped))).key
        if back != data_key:
            raise self.provider.unavailable(f"wrapping key {name} did not unwrap its own wrap")
        ref = f"{name}/{version}".encode()
        return (struct.pack(">BH", _WRAP_FORMAT, len(ref)) + ref
                + struct.pack(">H", len(wrapped)) + wrapped + nonce + body)

    async def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        corrupt = RecordCorruptError(f"material/{key_id}", "not a Key Vault envelope")
        try:
            fmt, size = struct.unpack_from(">BH", wrapped)
            name, version = wrapped[3:3 + size].decode().split("/")
            offset = 3 + size
            (length,) = struct.unpack_from(">H", wrapped, offset)
            data_key_wrapped = wrapped[offset + 2:offset + 2 + length]
            rest = wrapped[offset + 2 + length:]
        except (struct.error, UnicodeDecodeError, ValueError):
            raise corrupt from None
        if fmt != _WRAP_FORMAT or len(rest) < 28:
            raise corrupt
        client = self.provider.crypto(name, version)
        try:
            data_key = (await self.provider.call(
                lambda: client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, data_key_wrapped),
                bad_input=True)).key
            return AESGCM(data_key).decrypt(rest[:12], rest[12:], key_id.encode())
        except (InvalidCiphertext, InvalidTag, ValueError):
            raise RecordCorruptError(f"material/{key_id}",
                                     "does not unwrap under the Key Vault wrapping key") from None


def _tags(key_id: str, state: str) -> dict[str, str]:
    return {"managed-by": "qkms", "qkms-key-id": key_id, "qkms-state": state}


def _public_bytes(jwk: Any) -> bytes:
    """A JWK from Key Vault in the suites' encodings: RSA DER SPKI, EC SEC 1 point."""
    if jwk.n is not None:
        numbers = rsa.RSAPublicNumbers(int.from_bytes(jwk.e, "big"), int.from_bytes(jwk.n, "big"))
        return numbers.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"\x04" + bytes(jwk.x).rjust(32, b"\x00") + bytes(jwk.y).rjust(32, b"\x00")


def build(settings: Settings, sealed: SealedStore) -> AzureKeyVaultProvider:
    options = settings.provider_options
    vault_url = option(options, "AZURE_VAULT_URL", "vaultUrl")
    if vault_url is None:
        raise InvalidInputError("AZURE_VAULT_URL", "is required (https://NAME.vault.azure.net)")
    try:
        timeout = float(option(options, "AZURE_TIMEOUT", "timeoutSeconds") or "10")
        retries = int(option(options, "AZURE_RETRIES", "retries") or "2")
    except ValueError:
        raise InvalidInputError("AZURE_TIMEOUT", "timeout and retries must be numbers") from None
    transport: dict[str, Any] = {
        "connection_timeout": min(timeout, 5.0), "read_timeout": timeout,
        "retry_total": retries, "retry_backoff_factor": 0.2, "retry_backoff_max": 2,
        "verify_challenge_resource": flag(options, "AZURE_VERIFY_CHALLENGE_RESOURCE",
                                           "verifyChallengeResource", True),
        "api_version": option(options, "AZURE_API_VERSION", "apiVersion") or "7.5",
    }
    ca_bundle = option(options, "AZURE_CA_BUNDLE", "caBundle")
    if ca_bundle:
        transport["connection_verify"] = ca_bundle
    client = KeyClient(vault_url, credential_for(options), **transport)
    return AzureKeyVaultProvider(
        client, sealed, wrap_name=option(options, "AZURE_WRAP_KEY_NAME", "wrapKeyName")
        or "qkms-wrap", timeout=timeout,
        purge=flag(options, "AZURE_PURGE_ON_DESTROY", "purgeOnDestroy", False),
        hardware=flag(options, "AZURE_HSM_KEYS", "hsmKeys", False),
        cache_seconds=settings.key_cache_seconds)

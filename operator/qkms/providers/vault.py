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
import builtins
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hvac
import requests
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from hvac import exceptions as vault_errors

from qkms.config import Settings
from qkms.crypto import InvalidCiphertext, suite_for
from qkms.errors import (
    InvalidInputError,
    KeyNotFoundError,
    KeyStateError,
    OperationNotAllowedError,
    ProviderUnavailableError,
    RecordCorruptError,
)
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import Family, ProviderType
from qkms.store.sealed import SealedStore

from . import capabilities
from .base import Capability, CreatedKey, KeyHandle, ProviderHealth
from .software import SoftwareKeys

# qkms algorithm -> transit key type (hvac validates types client-side and does not know
# ML-DSA, so requests go through the generic read/write calls).
TRANSIT_TYPES: dict[str, str] = {
    "Ed25519": "ed25519", "ECDSA-P256": "ecdsa-p256", "RSA-2048": "rsa-2048",
    "RSA-4096": "rsa-4096", "AES-256-GCM": "aes256-gcm96",
    "ChaCha20-Poly1305": "chacha20-poly1305", "ML-DSA-44": "mldsa-44",
    "ML-DSA-65": "mldsa-65", "ML-DSA-87": "mldsa-87",
}
STATE = "vault-transit"  # sealed record kind: spent and destroyed versions per transit key


def _option(options: dict[str, str], env: str, setting: str) -> str | None:
    """A KeyPolicy setting (``address``) wins over the operator's environment
    (``VAULT_ADDR``): the registry merges both into the options, and the policy is the
    more specific of the two."""
    return options.get(setting) or options.get(env) or None


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        raise InvalidInputError(name, f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise InvalidInputError(name, "must be positive")
    return value


@dataclass(frozen=True)
class VaultOptions:
    address: str
    token: str = field(repr=False)
    mount: str = "transit"
    wrap_key: str = "qkms-wrap"
    timeout: float = 5.0
    namespace: str | None = None
    verify: bool | str = True

    @classmethod
    def from_options(cls, options: dict[str, str]) -> VaultOptions:
        """Environment names (``VAULT_ADDR``...) or KeyPolicy settings (``address``...)."""
        address = _option(options, "VAULT_ADDR", "address")
        token = _option(options, "VAULT_TOKEN", "token")
        if not address:
            raise InvalidInputError("VAULT_ADDR", "is required for HASHICORP_VAULT")
        if not token:
            raise InvalidInputError("VAULT_TOKEN", "is required for HASHICORP_VAULT "
                                    "(from the environment or the credentials Secret)")
        verify: bool | str = _option(options, "VAULT_CACERT", "caCert") or True
        if (_option(options, "VAULT_SKIP_VERIFY", "skipVerify") or "").lower() in ("1", "true"):
            verify = False
        return cls(
            address=address.rstrip("/"), token=token,
            mount=(_option(options, "VAULT_MOUNT_PATH", "mountPath") or "transit").strip("/"),
            wrap_key=_option(options, "VAULT_WRAP_KEY", "wrapKey") or "qkms-wrap",
            timeout=_seconds(_option(options, "VAULT_CLIENT_TIMEOUT", "timeout") or "5",
                             "VAULT_CLIENT_TIMEOUT"),
            namespace=_option(options, "VAULT_NAMESPACE", "namespace"), verify=verify)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _vault_reason(exc: vault_errors.VaultError) -> str:
    """The first line of Vault's first error, without hvac's method and URL suffix."""
    text = " ".join(str(e) for e in (exc.errors or [])) or type(exc).__name__
    lines = [line.strip(" *\t") for line in text.splitlines()]
    lines = [line for line in lines if line and not line.endswith("error occurred:")]
    return (lines[0] if lines else text)[:200]


def _network_reason(exc: requests.RequestException, timeout: float) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused" if "refused" in str(exc).lower() else "connection failed"
    return type(exc).__name__


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


class VaultProvider:
    type = ProviderType.HASHICORP_VAULT  # so `builtins.type` in annotations below

    def __init__(self, options: VaultOptions, store: SealedStore,
                 cache_seconds: float = 60.0) -> None:
        self.options = options
        self.store = store
        self.client = hvac.Client(url=options.address, token=options.token,
                                  timeout=options.timeout, verify=options.verify,
                                  namespace=options.namespace)
        self.envelope = SoftwareKeys(store, TransitWrapper(self), Capability.ENVELOPE,
                                     cache_seconds)
        self._locks: dict[str, asyncio.Lock] = {}
        self._fenced: dict[str, int] = {}  # transit key -> min_encryption_version seen
        self._wrap_ready = False

    def capability(self, algorithm: AlgorithmInfo) -> Capability:
        return capabilities.capability(self.type, algorithm)

    # -- calls -------------------------------------------------------------------------
    def unavailable(self, reason: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(f"{self.type.value} at {self.options.address}: {reason}")

    async def call(self, fn: Callable[..., Any], *args: Any, key_id: str | None = None,
                   bad_request: builtins.type[Exception] | None = None,
                   tolerate: Callable[[vault_errors.VaultError], bool] | None = None,
                   **kwargs: Any) -> Any:
        """Run one hvac call in a thread under the deadline, mapping failures to qkms errors.

        ``key_id`` turns "not found" into ``KeyNotFoundError``; ``bad_request`` is raised
        for other 400 answers (a failed decryption, say); ``tolerate`` returns None instead
        of raising for the errors it accepts.
        """
        try:
            async with asyncio.timeout(self.options.timeout):  # no extra task, unlike wait_for
                return await asyncio.to_thread(fn, *args, **kwargs)
        except TimeoutError:
            raise self.unavailable(f"no answer within {self.options.timeout:g}s") from None
        except requests.RequestException as exc:
            raise self.unavailable(_network_reason(exc, self.options.timeout)) from None
        except vault_errors.VaultError as exc:
            if tolerate is not None and tolerate(exc):
                return None
            raise self._translate(exc, key_id, bad_request) from None

    def _translate(self, exc: vault_errors.VaultError, key_id: str | None,
                   bad_request: builtins.type[Exception] | None) -> Exception:
        reason = _vault_reason(exc)
        if "soft-deleted" in reason:  # a 400 or a 500, depending on the endpoint
            return KeyStateError(f"Key version not usable: {key_id} is pending deletion "
                                 "(soft-deleted in Vault)")
        if isinstance(exc, vault_errors.Forbidden | vault_errors.Unauthorized):
            return self.unavailable("permission denied: check the token and its policy")
        if isinstance(exc, vault_errors.InvalidPath | vault_errors.InvalidRequest):
            if "no handler for route" in reason:
                return self.unavailable(f"no transit engine at {self.options.mount!r}")
            if key_id and (isinstance(exc, vault_errors.InvalidPath) or "not found" in reason):
                return KeyNotFoundError(key_id)
            if "less than the minimum" in reason:
                return KeyStateError(f"Key version not usable: Vault no longer allows {key_id} "
                                     f"to sign or encrypt ({reason})")
            if bad_request is not None and isinstance(exc, vault_errors.InvalidRequest):
                return bad_request(reason)
            return self.unavailable(f"request refused: {reason}")
        return self.unavailable(f"{reason}")

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
    async def create(self, key_id: str, algorithm: AlgorithmInfo) -> CreatedKey:
        if self.capability(algorithm) is not Capability.NATIVE:
            return await self.envelope.create(key_id, algorithm)
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

    async def new_version(self, previous: KeyHandle, key_id: str,
                          algorithm: AlgorithmInfo) -> CreatedKey:
        """Same algorithm on a transit key: rotate it; otherwise a new key (or envelope)."""
        ref = previous.ref
        if ("transit_key" not in ref or previous.algorithm.name != algorithm.name
                or self.capability(algorithm) is not Capability.NATIVE):
            return await self.create(key_id, algorithm)
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
    def _native(key: KeyHandle) -> tuple[str, str, int] | None:
        ref = key.ref
        if "transit_key" not in ref:
            return None
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

    async def sign(self, key: KeyHandle, data: bytes, *, prehashed: bool = False,
                   pkcs1v15: bool = False) -> bytes:
        native = self._native(key)
        if native is None:
            return await self.envelope.sign(key, data, prehashed=prehashed, pkcs1v15=pkcs1v15)
        mount, name, version = native
        await self._fence_encryption(mount, name, version)
        extra = {"prehashed": True} if prehashed else {}  # ECDSA: the input is the digest
        answer = await self.call(self.client.write_data, f"{mount}/sign/{name}", data={
            "input": _b64(data), "key_version": version,
            **_sign_params(key.algorithm, pkcs1v15),
            **extra}, key_id=key.key_id)
        return _unprefix(answer["data"]["signature"], version)

    async def encrypt(self, key: KeyHandle, plaintext: bytes, aad: bytes) -> bytes:
        native = self._native(key)
        if native is None:
            return await self.envelope.encrypt(key, plaintext, aad)
        mount, name, version = native
        await self._fence_encryption(mount, name, version)
        answer = await self.call(self.client.write_data, f"{mount}/encrypt/{name}", data={
            "plaintext": _b64(plaintext), "associated_data": _b64(aad),
            "key_version": version}, key_id=key.key_id)
        return answer["data"]["ciphertext"].encode()  # "vault:vN:..." is the provider ciphertext

    async def decrypt(self, key: KeyHandle, ciphertext: bytes, aad: bytes) -> bytes:
        native = self._native(key)
        if native is None:
            return await self.envelope.decrypt(key, ciphertext, aad)
        if not key.algorithm.symmetric:
            raise OperationNotAllowedError(
                f"{key.key_id} is a native {key.algorithm.name} transit key: transit RSA "
                "decryption takes no OAEP label, and qkms binds the version and context as "
                "one; use an envelope algorithm for RSA encryption on HASHICORP_VAULT")
        mount, name, version = native
        text = ciphertext.decode("ascii", "replace")
        _unprefix(text, version)  # a ciphertext of another transit version is refused here
        answer = await self.call(self.client.write_data, f"{mount}/decrypt/{name}", data={
            "ciphertext": text, "associated_data": _b64(aad)},
            key_id=key.key_id, bad_request=InvalidCiphertext)
        return base64.b64decode(answer["data"]["plaintext"])

    async def decapsulate(self, key: KeyHandle, ciphertext: bytes) -> bytes:
        return await self.envelope.decapsulate(key, ciphertext)  # KEMs are envelope keys

    async def derive(self, key: KeyHandle, info: bytes, length: int,
                     salt: bytes | None) -> bytes:
        return await self.envelope.derive(key, info, length, salt)  # so is HKDF

    # -- lifecycle -----------------------------------------------------------------------
    async def retire(self, key: KeyHandle) -> None:
        native = self._native(key)
        if native is None:
            self.envelope.forget(key.key_id)
            return
        async with self._lock(native[1]):
            await self._spend_locked(*native, destroyed=False)

    async def destroy(self, key: KeyHandle) -> None:
        native = self._native(key)
        if native is None:
            await self.envelope.destroy(key)
            return
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

    async def leftovers(self, key_id: str, algorithm: AlgorithmInfo,
                        previous: KeyHandle | None) -> list[KeyHandle]:
        """Envelope material for ``key_id``; the transit key a create names ``key_id``; and
        for a rotation, the versions of the old version's transit key after it."""
        found = await self.envelope.leftovers(key_id, algorithm)
        mount = self.options.mount
        if await self._read_key(mount, key_id) is not None:
            found.append(KeyHandle(key_id, algorithm, self._ref(mount, key_id, 1)))
        native = self._native(previous) if previous is not None else None
        if native is not None:
            mount, name, version = native
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

    async def schedule_destroy(self, key: KeyHandle, days: int) -> None:
        """Soft-delete the transit key where the server has soft delete (OpenBao)."""
        native = self._native(key)
        if native is not None:
            mount, name, _ = native
            await self.call(self.client.delete, f"{mount}/keys/{name}/soft-delete",
                            tolerate=self._unsupported)

    async def cancel_destroy(self, key: KeyHandle) -> None:
        native = self._native(key)
        if native is not None:
            mount, name, _ = native
            await self.call(self.client.write_data, f"{mount}/keys/{name}/soft-delete-restore",
                            tolerate=self._unsupported)

    def forget(self, key_id: str) -> None:
        self.envelope.forget(key_id)

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

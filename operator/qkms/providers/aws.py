"""AWS_KMS: keys held by AWS KMS, through boto3.

Native algorithms (``capabilities.NATIVE``) get one KMS key per qkms version: asymmetric
KMS keys cannot rotate in place, and one key per version lets a retired version be
disabled on its own.  Each qkms key has one alias, ``alias/qkms/<key ID of version 1>``
(the provider is never told the key's name, and the first key ID is as stable), pointing
at the active version's KMS key; a rotation creates a new KMS key and moves the alias.
ML-DSA and Ed25519 are tried natively once per process (a CreateKey attempt): an endpoint
that refuses the key spec (moto; regions without them) makes them envelope keys, and
``capabilities.PROBED`` records which, so the table and each key's ``provider_mode`` agree.

Message sizes follow KMS's 4096-byte limit on raw input: ECDSA and RSA sign larger
messages as a SHA-256 DIGEST, ML-DSA as EXTERNAL_MU (FIPS 204's mu, computed here from the
public key's hash kept in the ref), and Ed25519 refuses them (KMS's Ed25519ph is not plain
Ed25519).  AES-256-GCM (SYMMETRIC_DEFAULT) encrypts up to 4096 bytes with Encrypt, the
caller's associated data travelling base64 in the EncryptionContext, and the provider
ciphertext is AWS's opaque blob; larger plaintexts use a data key (GenerateDataKey, then
AES-GCM here) in a ``qkms-dk1`` blob.  The same sealing wraps envelope keys under
``AWS_KMS_KEY_ID`` (default ``alias/qkms/wrap``, created if absent) with the EncryptionContext
``{"qkms:key_id": <key ID>}``.

Lifecycle: ``schedule_destroy`` is ScheduleKeyDeletion with the window's days (7 to 30),
``cancel_destroy`` is CancelKeyDeletion and re-enables the key unless it was retired;
``destroy`` only checks that deletion is under way (AWS deletes the key, and its aliases,
when its own window ends).  ``retire`` disables the version's KMS key and tags it
``qkms:retired``, so a retired or revoked version cannot sign or decrypt even by direct
KMS calls.  Known gap: native RSA keys sign only (KMS RSA keys are SIGN_VERIFY or
ENCRYPT_DECRYPT, and KMS OAEP takes no label while qkms binds version and context as one).

Every call runs in a worker thread under a deadline (``AWS_KMS_TIMEOUT``, default 5 s; the
botocore client has the same connect and read timeouts; a throttled call is retried once
within the deadline, nothing else is, as the request may have run); connection
failures, timeouts, throttling, 5xx and credential errors raise ``ProviderUnavailableError(
"AWS_KMS at <endpoint>: <reason>")``, never with credentials.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)

from qkms.config import Settings
from qkms.crypto import InvalidCiphertext, suite_for
from qkms.errors import OperationNotAllowedError, ProviderUnavailableError, RecordCorruptError
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import Family, ProviderType
from qkms.store.sealed import SealedStore

from . import capabilities
from .aws_client import AwsOptions, KmsCalls, Rejected
from .base import Capability, CreatedKey, KeyHandle, ProviderHealth
from .routing import NativeOrEnvelope

# qkms algorithm -> (KeySpec, SigningAlgorithm); AES-256-GCM is SYMMETRIC_DEFAULT.
SIGNING: dict[str, tuple[str, str]] = {
    "ECDSA-secp256k1": ("ECC_SECG_P256K1", "ECDSA_SHA_256"),
    "ECDSA-P256": ("ECC_NIST_P256", "ECDSA_SHA_256"),
    "RSA-2048": ("RSA_2048", "RSASSA_PSS_SHA_256"),
    "RSA-4096": ("RSA_4096", "RSASSA_PSS_SHA_256"),
    "Ed25519": ("ECC_NIST_EDWARDS25519", "ED25519_SHA_512"),
    "ML-DSA-44": ("ML_DSA_44", "ML_DSA_SHAKE_256"),
    "ML-DSA-65": ("ML_DSA_65", "ML_DSA_SHAKE_256"),
    "ML-DSA-87": ("ML_DSA_87", "ML_DSA_SHAKE_256"),
}
RSA_PKCS1V15 = "RSASSA_PKCS1_V1_5_SHA_256"  # RSA keys sign with either scheme
PROBED = frozenset({"Ed25519", "ML-DSA-44", "ML-DSA-65", "ML-DSA-87"})
RAW_LIMIT = 4096  # bytes KMS takes as a RAW message or an Encrypt plaintext
DATA_KEY_MAGIC = b"qkms-dk1"  # neither AWS blobs (0x01...) nor moto's (a UUID) start so

def alias_for(key_id: str) -> str:
    return f"alias/qkms/{key_id}"


def ml_dsa_mu(public_hash: bytes, message: bytes) -> bytes:
    """FIPS 204 mu for pure ML-DSA with an empty context, given tr = SHAKE256(pk, 64):
    SHAKE256(tr || 0x00 || 0x00 || M, 64).  KMS signs it as MessageType EXTERNAL_MU."""
    return hashlib.shake_256(public_hash + b"\x00\x00" + message).digest(64)


def public_raw(algorithm: AlgorithmInfo, der: bytes) -> bytes:
    """KMS's DER SubjectPublicKeyInfo in qkms's encoding (SEC1 uncompressed for ECDSA, DER
    SPKI for RSA, raw for Ed25519 and ML-DSA), checked to be of the algorithm asked for."""
    key = load_der_public_key(der)
    if algorithm.name.startswith("ECDSA"):
        raw = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    elif algorithm.family is Family.RSA:
        raw = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    else:
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    suite_for(algorithm).load_public(raw)
    return raw


class KmsWrapper:
    """Envelope wrapping under ``AWS_KMS_KEY_ID``, the version's key ID in the context."""

    name = "aws-kms"

    def __init__(self, provider: AwsKmsProvider) -> None:
        self.provider = provider

    async def wrap(self, key_id: str, plaintext: bytes) -> bytes:
        kms_key = await self.provider.wrapping_key()
        return await self.provider.seal(kms_key, plaintext, {"qkms:key_id": key_id})

    async def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:  # the blob names its KMS key: a later AWS_KMS_KEY_ID still reads old records
            return await self.provider.unseal(wrapped, {"qkms:key_id": key_id})
        except InvalidCiphertext:
            raise RecordCorruptError(f"material/{key_id}", "AWS KMS could not unwrap it") from None


class AwsKmsProvider(KmsCalls, NativeOrEnvelope):
    """A KMS key per native version, the key's alias on the active one; envelope records
    wrapped by ``KmsWrapper``; ``seal`` and ``unseal`` serve both."""

    type = ProviderType.AWS_KMS
    NATIVE_REF = "kms_key"

    def __init__(self, options: AwsOptions, store: SealedStore,
                 cache_seconds: float = 60.0) -> None:
        KmsCalls.__init__(self, options)
        NativeOrEnvelope.__init__(self, store, KmsWrapper(self), cache_seconds)
        self._wrapping_key: str | None = None
        self._wrap_lock = asyncio.Lock()

    # -- sealing (native AES-256-GCM and envelope wrapping) ---------------------------------
    async def seal(self, kms_key: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        """Encrypt under a KMS key: Encrypt up to 4096 bytes (AWS's blob), else a data key."""
        if len(plaintext) <= RAW_LIMIT:
            answer = await self.call(self.client.encrypt, KeyId=kms_key, Plaintext=plaintext,
                                     EncryptionContext=context)
            return bytes(answer["CiphertextBlob"])
        answer = await self.call(self.client.generate_data_key, KeyId=kms_key,
                                 KeySpec="AES_256", EncryptionContext=context)
        nonce = os.urandom(12)
        body = AESGCM(answer["Plaintext"]).encrypt(nonce, plaintext, DATA_KEY_MAGIC)
        wrapped = bytes(answer["CiphertextBlob"])
        return DATA_KEY_MAGIC + struct.pack(">H", len(wrapped)) + wrapped + nonce + body

    async def unseal(self, blob: bytes, context: dict[str, str], kms_key: str | None = None,
                   key_id: str | None = None) -> bytes:
        """Undo ``seal``; ``kms_key`` (when given) must be the key that sealed it."""
        pinned: dict[str, Any] = {"KeyId": kms_key} if kms_key else {}
        if not blob.startswith(DATA_KEY_MAGIC):
            answer = await self.call(self.client.decrypt, CiphertextBlob=blob,
                                     EncryptionContext=context, key_id=key_id,
                                     bad_ciphertext=True, **pinned)
            return bytes(answer["Plaintext"])
        try:
            offset = len(DATA_KEY_MAGIC)
            (size,) = struct.unpack_from(">H", blob, offset)
            wrapped = blob[offset + 2:offset + 2 + size]
            nonce = blob[offset + 2 + size:offset + 14 + size]
            body = blob[offset + 14 + size:]
        except struct.error:
            raise InvalidCiphertext("truncated data-key blob") from None
        answer = await self.call(self.client.decrypt, CiphertextBlob=wrapped,
                                 EncryptionContext=context, key_id=key_id,
                                 bad_ciphertext=True, **pinned)
        try:
            return AESGCM(answer["Plaintext"]).decrypt(nonce, body, DATA_KEY_MAGIC)
        except Exception:
            raise InvalidCiphertext("data-key blob failed authentication") from None

    async def wrapping_key(self) -> str:
        """The envelope wrapping key's ID; an alias that does not exist yet is created."""
        if self._wrapping_key is not None:
            return self._wrapping_key
        async with self._wrap_lock:
            if self._wrapping_key is None:
                name = self.options.wrap_key
                answer = await self.call(self.client.describe_key, KeyId=name,
                                         tolerate=frozenset({"NotFoundException"}))
                if answer is None:
                    if not name.startswith("alias/"):
                        raise self.unavailable(f"wrapping key {name} (AWS_KMS_KEY_ID) not found")
                    answer = await self._create_wrapping_key(name)
                self._wrapping_key = str(answer["KeyMetadata"]["KeyId"])
        return self._wrapping_key

    async def _create_wrapping_key(self, alias: str) -> dict[str, Any]:
        created = await self.call(self.client.create_key, KeySpec="SYMMETRIC_DEFAULT",
                                  KeyUsage="ENCRYPT_DECRYPT",
                                  Description="qkms envelope wrapping key")
        arn = created["KeyMetadata"]["KeyId"]
        taken = await self.call(self.client.create_alias, AliasName=alias, TargetKeyId=arn,
                                tolerate=frozenset({"AlreadyExistsException"}))
        if taken is None:  # another replica won the race: use its key, drop ours
            await self._schedule_deletion(arn, 7)
            return await self.call(self.client.describe_key, KeyId=alias)
        return created

    # -- creation ------------------------------------------------------------------------
    def _probing(self, algorithm: AlgorithmInfo) -> bool:
        """Not yet tried natively in this process (ML-DSA, Ed25519)."""
        return algorithm.name in PROBED and (self.type, algorithm.name) not in capabilities.PROBED

    def tries_native(self, algorithm: AlgorithmInfo) -> bool:
        return super().tries_native(algorithm) or self._probing(algorithm)

    @staticmethod
    def _alias(key_id: str, previous: KeyHandle | None) -> str:
        """A new key's alias, or the one the key has had since its first version."""
        if previous is None:
            return alias_for(key_id)
        return previous.ref.get("alias") or alias_for(previous.key_id)

    def envelope_ref(self, key_id: str, previous: KeyHandle | None) -> dict[str, Any]:
        return {"alias": self._alias(key_id, previous)}

    async def native_create(self, key_id: str, algorithm: AlgorithmInfo,
                            previous: KeyHandle | None) -> CreatedKey | None:
        """A new KMS key; a new key's alias is created, a rotation moves it.  An algorithm
        tried for the first time that the endpoint refuses becomes envelope (None)."""
        probing = self._probing(algorithm)
        try:
            created = await self._create_native(key_id, algorithm,
                                                self._alias(key_id, previous), previous is None)
        except Rejected:
            if not probing:
                raise self.unavailable(f"the endpoint refused a {algorithm.name} key") from None
            capabilities.PROBED[(self.type, algorithm.name)] = Capability.ENVELOPE
            return None
        if probing:
            capabilities.PROBED[(self.type, algorithm.name)] = Capability.NATIVE
        return created

    async def _create_native(self, key_id: str, algorithm: AlgorithmInfo, alias: str,
                             new_alias: bool) -> CreatedKey:
        symmetric = algorithm.symmetric
        spec = "SYMMETRIC_DEFAULT" if symmetric else SIGNING[algorithm.name][0]
        answer = await self.call(
            self.client.create_key, rejectable=True, KeySpec=spec,
            KeyUsage="ENCRYPT_DECRYPT" if symmetric else "SIGN_VERIFY",
            Description=f"qkms {key_id} ({algorithm.name})",
            Tags=[{"TagKey": "qkms:key_id", "TagValue": key_id}])
        # The key ID, not the ARN: moto's DisableKey takes no ARN, and the client is bound to
        # one region anyway.
        arn = str(answer["KeyMetadata"]["KeyId"])
        ref: dict[str, Any] = {"kms_key": arn, "alias": alias}
        public = None
        try:
            if not symmetric:
                der = (await self.call(self.client.get_public_key, KeyId=arn))["PublicKey"]
                public = public_raw(algorithm, bytes(der))
                if algorithm.name.startswith("ML-DSA"):
                    ref["tr"] = base64.b64encode(hashlib.shake_256(public).digest(64)).decode()
            await self._point_alias(alias, arn, new_alias)
        except Exception:
            with contextlib.suppress(Exception):  # leave no half-made key behind
                await self._schedule_deletion(arn, 7)
            raise
        return CreatedKey(ref=ref, public_key=public, mode=Capability.NATIVE)

    async def _point_alias(self, alias: str, arn: str, new: bool) -> None:
        """Create the alias, or move it to ``arn`` (creating it if an envelope came first)."""
        if not new:
            moved = await self.call(self.client.update_alias, AliasName=alias, TargetKeyId=arn,
                                    tolerate=frozenset({"NotFoundException"}))
            if moved is not None:
                return
        await self.call(self.client.create_alias, AliasName=alias, TargetKeyId=arn)

    # -- operations ----------------------------------------------------------------------
    async def native_sign(self, key: KeyHandle, data: bytes, *, prehashed: bool,
                          pkcs1v15: bool) -> bytes:
        arn = key.ref["kms_key"]
        name = key.algorithm.name
        message, kind = data, "RAW"
        if prehashed:  # ECDSA only: a 32-byte digest signed as given
            kind = "DIGEST"
        elif len(data) > RAW_LIMIT:
            if name == "Ed25519":
                raise OperationNotAllowedError(
                    f"AWS KMS signs Ed25519 messages of at most {RAW_LIMIT} bytes "
                    f"({len(data)} given); its Ed25519ph is not plain Ed25519")
            if name.startswith("ML-DSA"):
                message, kind = ml_dsa_mu(base64.b64decode(key.ref["tr"]), data), "EXTERNAL_MU"
            else:
                message, kind = hashlib.sha256(data).digest(), "DIGEST"
        scheme = RSA_PKCS1V15 if pkcs1v15 else SIGNING[name][1]
        answer = await self.call(self.client.sign, key_id=key.key_id, KeyId=arn,
                                 Message=message, MessageType=kind,
                                 SigningAlgorithm=scheme)
        return bytes(answer["Signature"])

    @staticmethod
    def _context(aad: bytes) -> dict[str, str]:
        return {"qkms:aad": base64.b64encode(aad).decode()}

    async def native_encrypt(self, key: KeyHandle, plaintext: bytes, aad: bytes) -> bytes:
        return await self.seal(key.ref["kms_key"], plaintext, self._context(aad))

    async def native_decrypt(self, key: KeyHandle, ciphertext: bytes, aad: bytes) -> bytes:
        if not key.algorithm.symmetric:
            raise self.sign_only(key, "KMS key", "KMS RSA keys sign or decrypt, not both, and "
                                 "KMS OAEP takes no label while qkms binds the version and "
                                 "context as one")
        return await self.unseal(ciphertext, self._context(aad), kms_key=key.ref["kms_key"],
                                 key_id=key.key_id)

    # -- lifecycle -----------------------------------------------------------------------
    async def _schedule_deletion(self, arn: str, days: int) -> None:
        await self.call(self.client.schedule_key_deletion, KeyId=arn,
                        PendingWindowInDays=min(max(days, 7), 30),
                        tolerate=frozenset({"KMSInvalidStateException", "NotFoundException"}))

    async def native_schedule_destroy(self, key: KeyHandle, days: int) -> None:
        await self._schedule_deletion(key.ref["kms_key"], days)

    async def native_cancel_destroy(self, key: KeyHandle) -> None:
        """Cancel the deletion; a cancelled KMS key comes back disabled, so re-enable it
        unless qkms had retired it."""
        arn = key.ref["kms_key"]
        await self.call(self.client.cancel_key_deletion, KeyId=arn, key_id=key.key_id,
                        tolerate=frozenset({"KMSInvalidStateException"}))
        tags = await self.call(self.client.list_resource_tags, KeyId=arn, key_id=key.key_id)
        if not any(t["TagKey"] == "qkms:retired" for t in tags.get("Tags", [])):
            await self.call(self.client.enable_key, KeyId=arn, key_id=key.key_id)

    async def native_retire(self, key: KeyHandle) -> None:
        arn = key.ref["kms_key"]
        await self.call(self.client.tag_resource, KeyId=arn,
                        Tags=[{"TagKey": "qkms:retired", "TagValue": "true"}],
                        tolerate=frozenset({"NotFoundException", "KMSInvalidStateException"}))
        await self.call(self.client.disable_key, KeyId=arn,
                        tolerate=frozenset({"NotFoundException", "KMSInvalidStateException"}))

    async def native_destroy(self, key: KeyHandle) -> None:
        """AWS deletes the key when its window ends; make sure that deletion is under way
        (re-scheduling it with the minimum window if someone cancelled it out of band)."""
        arn = key.ref["kms_key"]
        answer = await self.call(self.client.describe_key, KeyId=arn,
                                 tolerate=frozenset({"NotFoundException"}))
        if answer is not None and answer["KeyMetadata"].get("KeyState") != "PendingDeletion":
            await self._schedule_deletion(arn, 7)

    async def native_leftovers(self, key_id: str, algorithm: AlgorithmInfo,
                               previous: KeyHandle | None) -> list[KeyHandle]:
        """Every KMS key tagged ``qkms:key_id`` with ``key_id`` (CreateKey sets the tag, so
        a key whose alias never moved is found too). KMS has no search by tag: the
        account's keys are listed, once per unresolved intent."""
        found: list[KeyHandle] = []
        wanted = {"TagKey": "qkms:key_id", "TagValue": key_id}
        marker: dict[str, Any] = {}
        while True:
            page = await self.call(self.client.list_keys, **marker)
            for key in page.get("Keys", []):
                tags = await self.call(self.client.list_resource_tags, KeyId=key["KeyId"],
                                       tolerate=frozenset({"NotFoundException",
                                                           "AccessDeniedException"}))
                if tags is not None and wanted in tags.get("Tags", []):
                    found.append(KeyHandle(key_id, algorithm, {"kms_key": key["KeyId"]}))
            if not page.get("Truncated"):
                return found
            marker = {"Marker": page["NextMarker"]}

    async def health(self) -> ProviderHealth:
        detail: dict[str, Any] = {"endpoint": self.options.address,
                                  "region": self.options.region}
        try:
            await self.call(self.client.list_keys, Limit=1)
        except ProviderUnavailableError as exc:
            return ProviderHealth("unhealthy", {**detail, "error": exc.message})
        return ProviderHealth("healthy", detail)


def build(settings: Settings, sealed: SealedStore) -> AwsKmsProvider:
    return AwsKmsProvider(AwsOptions.from_options(settings.provider_options), sealed,
                          cache_seconds=settings.key_cache_seconds)

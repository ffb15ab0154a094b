"""HSM (PKCS#11): keys generated and used inside the token, never exported.

Native (``capabilities.NATIVE[HSM]``): AES-256-GCM, ECDSA-P256, Ed25519, RSA-2048/4096.
Each is generated on the token with CKA_TOKEN, CKA_PRIVATE and CKA_SENSITIVE true and
CKA_EXTRACTABLE false, its objects labelled (CKA_LABEL and CKA_ID) by the version's key
ID, so a new version is a new token key and ``destroy`` deletes that version's objects.
The public key is read from the token (CKA_EC_POINT, CKA_MODULUS) and recorded in the
raw encodings the crypto suites use.

Every other algorithm (ML-DSA, ML-KEM, Falcon, hybrids, secp256k1, ChaCha20, HKDF) is an
envelope key: generated in software and stored as a sealed record, wrapped with
AES-256-GCM under one token AES key (label ``qkms-wrap``, created on first use), the key
ID as AAD.  AES-GCM rather than CKM_AES_KEY_WRAP_PAD: SoftHSM (and PKCS#11 generally)
offers key-wrap mechanisms only through C_WrapKey for key *objects*, not for bytes.

Mechanisms: ECDSA is raw CKM_ECDSA over a SHA-256 digest computed here (the r||s result
becomes DER); Ed25519 is CKM_EDDSA (pure); RSA signs with CKM_SHA256_RSA_PKCS_PSS
(MGF1-SHA256, salt 32), or CKM_SHA256_RSA_PKCS when PKCS#1 v1.5 is asked for.
RSA decryption tries CKM_RSA_PKCS_OAEP with SHA-256 and the caller's AAD as label and,
where the token refuses those parameters (SoftHSM 2.6 allows only SHA-1 without a
label), falls back to CKM_RSA_X_509 with the OAEP decoding done
here (``rsa_oaep``): the private key still never leaves the token.  Because
``create`` does not know the usage, an RSA private key may sign and decrypt; the
service refuses operations outside the key's usage before they reach the token.

``schedule_destroy``/``cancel_destroy`` are no-ops (PKCS#11 has no deletion window: the
service destroys at the window's end) and ``retire`` only drops cached handles (a
token has no "minimum decryption version"; the service refuses a retired version
before the token sees it).

Blocking python-pkcs11 calls run in worker threads, one shared session per token
(``pkcs11_token``), each call bounded by ``HSM_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, GCMParams, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11

from qkms.config import Settings
from qkms.crypto.base import InvalidCiphertext
from qkms.errors import InvalidInputError, KeyNotFoundError, RecordCorruptError
from qkms.model.algorithms import AlgorithmInfo
from qkms.model.enums import ProviderType
from qkms.store.sealed import SealedStore

from .base import Capability, CreatedKey, KeyHandle, ProviderHealth
from .pkcs11_token import Token
from .routing import NativeOrEnvelope
from .rsa_oaep import oaep_decode

T = TypeVar("T")

_P256 = bytes.fromhex("06082a8648ce3d030107")  # DER OID 1.2.840.10045.3.1.7 (CKA_EC_PARAMS)
_ED25519 = bytes.fromhex("06032b6570")  # DER OID 1.3.101.112
_PSS = (Mechanism.SHA256, MGF.SHA256, 32)
_NONCE = 12
# The token refused our OAEP parameters (not the ciphertext): use raw RSA instead.
_OAEP_REFUSED = (p11.ArgumentsBad, p11.MechanismParamInvalid, p11.MechanismInvalid)
_BAD_INPUT = (p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.DataInvalid,
              p11.DataLenRange)
_SECRET, _PRIVATE, _PUBLIC = ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY
# Generated inside the token, usable only there.
_KEEP_INSIDE = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False}


def _option(options: dict[str, str], env: str, setting: str) -> str | None:
    """A KeyPolicy setting (camelCase) wins over the environment variable."""
    value = options.get(setting) or options.get(env)
    return value.strip() if isinstance(value, str) and value.strip() else None


class HsmProvider(NativeOrEnvelope):
    type = ProviderType.HSM
    NATIVE_REF = "label"

    def __init__(self, token: Token, store: SealedStore, *, wrap_label: str = "qkms-wrap",
                 timeout: float = 10.0, cache_seconds: float = 60.0) -> None:
        self.token = token
        self.wrap_label = wrap_label
        self.timeout = timeout
        super().__init__(store, HsmWrapper(self), cache_seconds)
        self._raw_oaep = False  # set once the token refuses OAEP-SHA256 with a label

    async def run(self, fn: Callable[[Any], T]) -> T:
        """``fn(session)`` in a worker thread, on the shared session, within the timeout."""
        try:
            async with asyncio.timeout(self.timeout):  # cheaper than wait_for: no extra task
                return await asyncio.to_thread(self.token.call, fn)
        except TimeoutError:
            raise self.token.unavailable(f"no answer within {self.timeout:g}s") from None

    # -- objects -----------------------------------------------------------------------
    def _object(self, session: Any, label: str, kind: ObjectClass) -> Any:
        """The token object, cached per session; a missing one is a missing key."""
        cached = self.token.objects.get((label, kind))
        if cached is None:
            try:
                cached = session.get_key(object_class=kind, label=label)
            except p11.NoSuchKey:
                raise KeyNotFoundError(label) from None
            except p11.MultipleObjectsReturned:
                raise RecordCorruptError(f"token object {label}",
                                         "more than one object has this label") from None
            self.token.objects[(label, kind)] = cached
        return cached

    def _probe(self, key: Any) -> None:
        """Raise (a device error) unless ``key`` still answers.

        SoftHSM reports a failed GCM tag or an out-of-range RSA input as
        CKR_GENERAL_ERROR, as it reports a lost token; reading an attribute tells
        a bad ciphertext (the key answers) from an outage (it does not).
        """
        _ = key[Attribute.LABEL]

    # -- creation ----------------------------------------------------------------------
    async def native_create(self, key_id: str, algorithm: AlgorithmInfo,
                            previous: KeyHandle | None) -> CreatedKey:
        """A new token key under the version's key ID, for a new key and a rotation alike."""
        public = await self.run(lambda session: self._generate(session, key_id, algorithm.name))
        return CreatedKey(ref={"label": key_id}, public_key=public, mode=Capability.NATIVE)

    def _generate(self, session: Any, key_id: str, name: str) -> bytes | None:
        common: dict[str, Any] = {"id": key_id.encode(), "label": key_id, "store": True}
        if name == "AES-256-GCM":
            session.generate_key(KeyType.AES, 256, template=_KEEP_INSIDE,
                                 capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                                 **common)
            return None
        sign = MechanismFlag.SIGN | MechanismFlag.VERIFY
        if name == "ECDSA-P256":
            public, _ = session.generate_keypair(
                KeyType.EC, mechanism=Mechanism.EC_KEY_PAIR_GEN, capabilities=sign,
                public_template={Attribute.EC_PARAMS: _P256}, private_template=_KEEP_INSIDE,
                **common)
        elif name == "Ed25519":
            public, _ = session.generate_keypair(
                KeyType.EC_EDWARDS, mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                capabilities=sign, public_template={Attribute.EC_PARAMS: _ED25519},
                private_template=_KEEP_INSIDE, **common)
        elif name in ("RSA-2048", "RSA-4096"):
            public, _ = session.generate_keypair(
                KeyType.RSA, int(name[4:]), private_template=_KEEP_INSIDE,
                capabilities=sign | MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT, **common)
        else:
            raise InvalidInputError("algorithm", f"{name} is not native on the HSM")
        try:
            return _public_bytes(name, public)
        except Exception:
            self._delete(session, key_id)  # no half-made key: the pair goes with the failure
            raise

    # -- operations --------------------------------------------------------------------
    async def native_sign(self, key: KeyHandle, data: bytes, *, prehashed: bool,
                          pkcs1v15: bool) -> bytes:
        name = key.algorithm.name

        def sign(session: Any) -> bytes:
            private = self._object(session, key.key_id, _PRIVATE)
            if name == "ECDSA-P256":  # CKM_ECDSA signs the digest it is given
                digest = bytes(data) if prehashed else hashlib.sha256(data).digest()
                raw = private.sign(digest, mechanism=Mechanism.ECDSA)
                return encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                            int.from_bytes(raw[32:], "big"))
            if name == "Ed25519":
                return private.sign(data, mechanism=Mechanism.EDDSA)
            if pkcs1v15:
                return private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)
            return private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                                mechanism_param=_PSS)
        return await self.run(sign)

    async def native_encrypt(self, key: KeyHandle, plaintext: bytes, aad: bytes) -> bytes:
        return await self.run(lambda s: self._seal(self._object(s, key.key_id, _SECRET),
                                                   plaintext, aad))

    async def native_decrypt(self, key: KeyHandle, ciphertext: bytes, aad: bytes) -> bytes:
        if key.algorithm.symmetric:
            return await self.run(lambda s: self._open(self._object(s, key.key_id, _SECRET),
                                                       ciphertext, aad))
        return await self.run(lambda s: self._rsa_decrypt(
            self._object(s, key.key_id, _PRIVATE), ciphertext, aad))

    @staticmethod
    def _seal(secret: Any, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM: nonce || ciphertext || tag, like the software suite."""
        nonce = os.urandom(_NONCE)
        return nonce + secret.encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                                      mechanism_param=GCMParams(nonce, aad, 128))

    def _open(self, secret: Any, body: bytes, aad: bytes) -> bytes:
        if len(body) < _NONCE + 16:
            raise InvalidCiphertext("AES-GCM ciphertext is too short")
        try:
            return secret.decrypt(body[_NONCE:], mechanism=Mechanism.AES_GCM,
                                  mechanism_param=GCMParams(body[:_NONCE], aad, 128))
        except _BAD_INPUT:
            raise InvalidCiphertext("AES-GCM authentication failed") from None
        except p11.GeneralError:
            self._probe(secret)
            raise InvalidCiphertext("AES-GCM authentication failed") from None

    def _rsa_decrypt(self, private: Any, body: bytes, aad: bytes) -> bytes:
        if not self._raw_oaep:
            try:
                return private.decrypt(body, mechanism=Mechanism.RSA_PKCS_OAEP,
                                       mechanism_param=(Mechanism.SHA256, MGF.SHA256, aad or None))
            except _OAEP_REFUSED:
                self._raw_oaep = True
            except _BAD_INPUT:
                raise InvalidCiphertext("RSA-OAEP decryption failed") from None
        size = private.key_length // 8
        if len(body) != size:
            raise InvalidCiphertext("RSA-OAEP decryption failed")
        try:
            encoded = private.decrypt(body, mechanism=Mechanism.RSA_X_509)
        except _BAD_INPUT:
            raise InvalidCiphertext("RSA-OAEP decryption failed") from None
        except p11.GeneralError:
            self._probe(private)
            raise InvalidCiphertext("RSA-OAEP decryption failed") from None
        return oaep_decode(encoded, aad, size)

    # -- lifecycle ---------------------------------------------------------------------
    def _delete(self, session: Any, label: str) -> None:
        for obj in list(session.get_objects({Attribute.LABEL: label})):
            obj.destroy()
        for kind in (_SECRET, _PRIVATE, _PUBLIC):
            self.token.objects.pop((label, kind), None)

    async def native_destroy(self, key: KeyHandle) -> None:
        """Delete the version's token objects (idempotent)."""
        await self.run(lambda session: self._delete(session, key.key_id))

    async def native_leftovers(self, key_id: str, algorithm: AlgorithmInfo,
                               previous: KeyHandle | None) -> list[KeyHandle]:
        """The token objects labelled with ``key_id``."""
        if await self.run(lambda session: any(
                True for _ in session.get_objects({Attribute.LABEL: key_id}))):
            return [KeyHandle(key_id, algorithm, {"label": key_id})]
        return []

    # PKCS#11 has no deletion window (``destroy`` deletes at its end) and no minimum
    # version: the service refuses retired versions; ``retire`` drops cached handles.
    def forget(self, key_id: str) -> None:
        super().forget(key_id)
        for kind in (_SECRET, _PRIVATE, _PUBLIC):
            self.token.objects.pop((key_id, kind), None)

    async def health(self) -> ProviderHealth:
        try:
            async with asyncio.timeout(self.timeout):
                info = await asyncio.to_thread(self.token.info)
        except TimeoutError:
            return ProviderHealth("unhealthy", {"device": self.token.where,
                                                "error": f"no answer within {self.timeout:g}s"})
        except Exception as exc:  # health reports, never raises
            error = getattr(exc, "message", type(exc).__name__)
            return ProviderHealth("unhealthy", {"device": self.token.where, "error": error})
        return ProviderHealth("healthy", {**info, "wrap_key": self.wrap_label,
                                          "cached": len(self.envelope._cache)})


class HsmWrapper:
    """Envelope material under the token's AES-256 wrapping key, AES-GCM, key ID as AAD."""

    def __init__(self, provider: HsmProvider) -> None:
        self.provider = provider
        self.name = f"hsm-aes-gcm:{provider.wrap_label}"

    def _keys(self, session: Any, create: bool) -> list[Any]:
        """Every token AES key with the wrapping label, one created if there is none.

        Two processes starting at once may both create one; then records wrapped under
        either still unwrap (each is tried), and new records use the first found.
        """
        label = self.provider.wrap_label
        cached = self.provider.token.objects.get((label, _SECRET))
        if cached:
            return cached
        keys = list(session.get_objects({Attribute.CLASS: _SECRET, Attribute.LABEL: label}))
        if not keys:
            if not create:
                raise self.provider.token.unavailable(
                    f"wrapping key {label!r} is missing from the token")
            keys = [session.generate_key(
                KeyType.AES, 256, id=label.encode(), label=label, store=True,
                template=_KEEP_INSIDE, capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT)]
        self.provider.token.objects[(label, _SECRET)] = keys
        return keys

    async def wrap(self, key_id: str, plaintext: bytes) -> bytes:
        return await self.provider.run(lambda s: self.provider._seal(
            self._keys(s, create=True)[0], plaintext, key_id.encode()))

    async def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        def unwrap(session: Any) -> bytes:
            for key in self._keys(session, create=False):
                try:
                    return self.provider._open(key, wrapped, key_id.encode())
                except InvalidCiphertext:
                    continue
            raise RecordCorruptError(f"material/{key_id}",
                                     "does not unwrap under the HSM wrapping key")
        return await self.provider.run(unwrap)


def _public_bytes(name: str, public: Any) -> bytes:
    """The recorded public encoding: SEC 1 point, raw Ed25519, or RSA DER SPKI."""
    if name.startswith("RSA"):
        numbers = rsa.RSAPublicNumbers(int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
                                       int.from_bytes(public[Attribute.MODULUS], "big"))
        return numbers.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    point = bytes(public[Attribute.EC_POINT])
    size = 65 if name == "ECDSA-P256" else 32
    if len(point) == size + 2 and point[0] == 0x04 and point[1] == size:
        point = point[2:]  # PKCS#11 wraps the point in a DER OCTET STRING
    if len(point) != size:
        raise ValueError(f"unexpected CKA_EC_POINT length {len(point)} for {name}")
    return point


def build(settings: Settings, sealed: SealedStore) -> HsmProvider:
    options = settings.provider_options
    library = _option(options, "HSM_LIBRARY", "library")
    if library is None:
        raise InvalidInputError("HSM_LIBRARY", "is required: the path of the PKCS#11 module")
    slot_text = _option(options, "HSM_SLOT", "slot")
    label = _option(options, "HSM_TOKEN_LABEL", "tokenLabel")
    slot = None
    if slot_text is not None and slot_text.isdigit():
        slot = int(slot_text)
    elif slot_text is not None:
        label = label or slot_text  # HSM_SLOT may name the token by its label
    if slot is None and label is None:
        raise InvalidInputError("HSM_SLOT", "is required: a slot ID or a token label")
    pin = options.get("HSM_PIN")
    if not pin:
        raise InvalidInputError("HSM_PIN", "is required (from the environment or a Secret)")
    timeout_text = _option(options, "HSM_TIMEOUT", "timeoutSeconds") or "10"
    try:
        timeout = float(timeout_text)
    except ValueError:
        raise InvalidInputError("HSM_TIMEOUT", "must be a number of seconds") from None
    token = Token.shared(library, slot, label, pin, lock_timeout=timeout)
    return HsmProvider(token, sealed,
                       wrap_label=_option(options, "HSM_WRAP_KEY_LABEL", "wrapKeyLabel")
                       or "qkms-wrap",
                       timeout=timeout, cache_seconds=settings.key_cache_seconds)

"""Behaviour every suite shares, so each suite module only says what differs.

* Base key classes refuse every operation with ``UnsupportedOperation``; a
  family's mixin switches on the operations it has.
* ``verify`` is wrapped once here: any failure inside a library (bad length,
  bad encoding, wrong signature) becomes ``False``, never an exception,
  because callers treat "malformed" and "forged" alike.
* The AEAD framing (12-byte random nonce || ciphertext || tag) and the
  KEM-DEM construction are defined once and reused by AES-GCM, ChaCha20,
  every ML-KEM size and X-Wing.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qkms.errors import InvalidInputError
from qkms.model.algorithms import AlgorithmInfo

from .base import InvalidCiphertext, UnsupportedOperation

NONCE_LEN = 12
TAG_LEN = 16
KEM_DEM_INFO = b"qkms kem-dem v1"


def spki_pem_of(key: Any) -> str:
    """SPKI PEM of a ``cryptography`` public key object."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def require_len(field: str, what: str, data: bytes, *lengths: int) -> bytes:
    """Return ``data`` as bytes if its length is one of ``lengths``.

    The error names the algorithm and the lengths only, never the bytes.
    """
    data = bytes(data)
    if len(data) not in lengths:
        want = " or ".join(str(n) for n in lengths)
        raise InvalidInputError(field, f"{what} needs {want} bytes, got {len(data)}")
    return data


class BasePublicKey:
    """A public key offering nothing until a family mixin says otherwise."""

    def raw(self) -> bytes:
        raise NotImplementedError

    def pem(self) -> str | None:
        return None

    def jwk(self, kid: str) -> dict | None:
        return None

    def verify(self, data: bytes, signature: bytes) -> bool:
        raise UnsupportedOperation("verify")

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        raise UnsupportedOperation("encrypt")

    def encapsulate(self) -> tuple[bytes, bytes]:
        raise UnsupportedOperation("encapsulate")


class BasePrivateKey:
    """A private key offering nothing until a family mixin says otherwise."""

    def public(self) -> BasePublicKey | None:
        return None

    def sign(self, data: bytes) -> bytes:
        raise UnsupportedOperation("sign")

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        raise UnsupportedOperation("encrypt")

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes:
        raise UnsupportedOperation("decrypt")

    def decapsulate(self, ciphertext: bytes) -> bytes:
        raise UnsupportedOperation("decapsulate")

    def derive(self, info: bytes, length: int, salt: bytes | None = None) -> bytes:
        raise UnsupportedOperation("derive")


class SignaturePublicKey(BasePublicKey):
    """Implements ``verify`` on top of ``_verify``, which may raise or return False."""

    def _verify(self, data: bytes, signature: bytes) -> bool:
        raise NotImplementedError

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            return bool(self._verify(bytes(data), bytes(signature)))
        except Exception:  # noqa: BLE001 - malformed input of any kind means "not valid"
            return False


class AsymmetricPrivateKey(BasePrivateKey):
    """A private key whose public half is computed once at load time."""

    _public: BasePublicKey

    def public(self) -> BasePublicKey:
        return self._public

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        return self._public.encrypt(plaintext, aad)


class Aead(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


def aead_seal(cipher: Aead, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || ciphertext || tag, with a fresh random 96-bit nonce.

    Random nonces are safe here because each key encrypts far fewer than
    2^32 messages in its rotation period (NIST SP 800-38D section 8.3).
    """
    nonce = os.urandom(NONCE_LEN)
    return nonce + cipher.encrypt(nonce, bytes(plaintext), bytes(aad))


def aead_open(cipher: Aead, blob: bytes, aad: bytes) -> bytes:
    blob = bytes(blob)
    if len(blob) < NONCE_LEN + TAG_LEN:
        raise InvalidCiphertext("ciphertext is shorter than nonce and tag")
    try:
        return cipher.decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], bytes(aad))
    except InvalidTag:
        raise InvalidCiphertext("ciphertext failed authentication") from None


def hkdf_sha256(secret: bytes, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def _dem_cipher(shared_secret: bytes, algorithm: str) -> AESGCM:
    """The DEM key is bound to the algorithm name so a shared secret never serves two suites."""
    key = hkdf_sha256(shared_secret, KEM_DEM_INFO + algorithm.encode("ascii"), 32)
    return AESGCM(key)


class KemPublicKey(BasePublicKey):
    """``encrypt`` as KEM-DEM: ct_kem || nonce || AES-256-GCM(ct || tag).

    k = HKDF-SHA256(ss, salt=None, info=b"qkms kem-dem v1" + algorithm name, L=32).
    ct_kem has the parameter set's fixed length, so no length prefix is needed.
    """

    algorithm: str

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        ct_kem, shared_secret = self.encapsulate()
        return ct_kem + aead_seal(_dem_cipher(shared_secret, self.algorithm), plaintext, aad)


class KemPrivateKey(AsymmetricPrivateKey):
    """``decapsulate`` with the length check, and ``decrypt`` for KEM-DEM."""

    algorithm: str
    ciphertext_len: int

    def _decapsulate(self, ciphertext: bytes) -> bytes:
        raise NotImplementedError

    def decapsulate(self, ciphertext: bytes) -> bytes:
        ciphertext = bytes(ciphertext)
        if len(ciphertext) != self.ciphertext_len:
            raise InvalidCiphertext(
                f"{self.algorithm} ciphertext must be {self.ciphertext_len} bytes, "
                f"got {len(ciphertext)}"
            )
        return self._decapsulate(ciphertext)

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes:
        ciphertext = bytes(ciphertext)
        n = self.ciphertext_len
        if len(ciphertext) < n + NONCE_LEN + TAG_LEN:
            raise InvalidCiphertext("ciphertext is shorter than KEM ciphertext, nonce and tag")
        shared_secret = self.decapsulate(ciphertext[:n])
        return aead_open(_dem_cipher(shared_secret, self.algorithm), ciphertext[n:], aad)


class BaseSuite:
    """Holds the registry entry; subclasses add generate/load_private/load_public."""

    def __init__(self, info: AlgorithmInfo) -> None:
        self.info = info

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r})"

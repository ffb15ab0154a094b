"""Classical suites: Ed25519, ECDSA (P-256, secp256k1), RSA, AES-GCM, ChaCha20, HKDF.

Stored private forms (what ``generate`` returns and ``load_private`` takes):

=====================  ==========================================================
Ed25519                32-byte RFC 8032 private key (the seed)
ECDSA-P256/secp256k1   32-byte big-endian private scalar d (SEC 1 section 2.3.7);
                       smaller than PKCS#8 and carries no redundant public point
RSA-2048/4096          unencrypted PKCS#8 DER (RFC 5208); RSA has no seed form
AES-256-GCM, ChaCha20  32 random bytes
HKDF-SHA256            32 random bytes (the input keying material)
=====================  ==========================================================

Signature formats: Ed25519 per RFC 8032; ECDSA over SHA-256 as a DER
Ecdsa-Sig-Value (RFC 3279), low-S on secp256k1 (``ecdsa`` has the raw r||s form,
recovery ids and why); ECDSA verifies DER or raw r||s, high-S or low-S.  RSA is
RSASSA-PSS with SHA-256 and MGF1-SHA256, or, asked for (``sign_pkcs1v15``,
``verify_with(pkcs1v15=True)``), RSASSA-PKCS1-v1_5 with SHA-256 (sha256WithRSAEncryption,
what much TLS software still expects in certificates).
RSA signs with a 32-byte salt (= digest length, the usual interoperable
choice, RFC 8017 section 9.1) but verifies with any salt length, because AWS
KMS and others sign with the maximum salt length.

RSA encryption is RSAES-OAEP with SHA-256 and MGF1-SHA256, and the caller's
``aad`` is used as the OAEP label: the ciphertext is then bound to the aad as
AEAD callers expect, and an empty aad gives plain OAEP (empty label), which
is what other KMSs (AWS, GCP, Vault) produce and accept.

RSA JWKs carry ``alg: PS256`` because the public key does not know whether
the key is used for signing or encryption; encryption users should ignore
``alg`` and use RSA-OAEP-256.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from qkms.errors import InvalidInputError
from qkms.model.algorithms import AlgorithmInfo

from . import ecdsa
from ._common import (
    AsymmetricPrivateKey,
    BasePrivateKey,
    BaseSuite,
    SignaturePublicKey,
    aead_open,
    aead_seal,
    hkdf_sha256,
    require_len,
    spki_pem_of,
)
from .base import InvalidCiphertext, Suite
from .encoding import b64url, jwk

_SHA256_LEN = 32
_HKDF_MAX = 255 * _SHA256_LEN


# --- Ed25519 -------------------------------------------------------------------


class Ed25519Public(SignaturePublicKey):
    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self._key = key

    def raw(self) -> bytes:
        return self._key.public_bytes_raw()

    def pem(self) -> str:
        return spki_pem_of(self._key)

    def jwk(self, kid: str) -> dict:
        """RFC 8037 OKP key with ``alg: EdDSA``.

        RFC 9864 deprecates ``EdDSA`` for the fully-specified ``Ed25519``, but
        most deployed JOSE libraries still only know ``EdDSA``; switch here
        once verifiers catch up.
        """
        return jwk(kid, "OKP", "EdDSA", crv="Ed25519", x=b64url(self.raw()))

    def _verify(self, data: bytes, signature: bytes) -> bool:
        self._key.verify(signature, data)
        return True


class Ed25519Private(AsymmetricPrivateKey):
    _public: Ed25519Public

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self._public = Ed25519Public(key.public_key())

    def public(self) -> Ed25519Public:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(bytes(data))


class Ed25519Suite(BaseSuite):
    def generate(self) -> bytes:
        return ed25519.Ed25519PrivateKey.generate().private_bytes_raw()

    def load_private(self, private: bytes) -> Ed25519Private:
        raw = require_len("private_key", "Ed25519", private, 32)
        return Ed25519Private(ed25519.Ed25519PrivateKey.from_private_bytes(raw))

    def load_public(self, public: bytes) -> Ed25519Public:
        raw = require_len("public_key", "Ed25519", public, 32)
        try:
            return Ed25519Public(ed25519.Ed25519PublicKey.from_public_bytes(raw))
        except ValueError:
            raise InvalidInputError("public_key", "not a valid Ed25519 point") from None


# --- ECDSA ---------------------------------------------------------------------


class EcdsaPublic(SignaturePublicKey):
    def __init__(self, key: ec.EllipticCurvePublicKey, crv: str, alg: str) -> None:
        self._key, self._crv, self._alg = key, crv, alg

    def raw(self) -> bytes:
        """SEC 1 uncompressed point: 0x04 || x || y (65 bytes)."""
        return self._key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def pem(self) -> str:
        return spki_pem_of(self._key)

    def jwk(self, kid: str) -> dict:
        """RFC 7518 EC key; secp256k1 and ES256K per RFC 8812."""
        point = self.raw()
        return jwk(kid, "EC", self._alg, crv=self._crv, x=b64url(point[1:33]), y=b64url(point[33:]))

    def _verify(self, data: bytes, signature: bytes) -> bool:
        return self.verify_with(data, signature)

    def verify_with(self, data: bytes, signature: bytes, *, prehashed: bool = False,
                    signature_format: str | None = None) -> bool:
        """DER or raw r||s (``signature_format`` None tries both; a 64-byte signature may be
        either), over SHA-256 of ``data`` or, ``prehashed``, over the 32-byte ``data``.
        High-S and low-S both verify, as in OpenSSL.  Invalid or malformed: False."""
        signature = bytes(signature)
        forms = []
        if signature_format in (None, "raw") and len(signature) == ecdsa.RAW_LEN:
            forms.append(ecdsa.to_der(*ecdsa.from_raw(signature)))
        if signature_format in (None, "der"):
            forms.append(signature)
        if prehashed and len(data) != ecdsa.DIGEST_LEN:
            return False
        scheme = ec.ECDSA(Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256())
        for der in forms:
            try:
                self._key.verify(der, bytes(data), scheme)
                return True
            except Exception:  # noqa: BLE001, S112 - malformed or wrong: try the other form
                continue
        return False


class EcdsaPrivate(AsymmetricPrivateKey):
    """Signs DER over SHA-256; secp256k1 signatures are always low-S (``ecdsa``)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, crv: str, alg: str,
                 curve: ecdsa.Curve) -> None:
        self._key = key
        self._curve = curve
        self._public = EcdsaPublic(key.public_key(), crv, alg)

    def _finish(self, der: bytes) -> bytes:
        if self._curve is not ecdsa.SECP256K1:
            return der
        r, s = ecdsa.split(der)
        return ecdsa.to_der(r, ecdsa.low_s(self._curve, s))

    def sign(self, data: bytes) -> bytes:
        return self._finish(self._key.sign(bytes(data), ec.ECDSA(hashes.SHA256())))

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a 32-byte digest as given (SHA-256, or Keccak-256 for Ethereum)."""
        digest = require_len("data", "a prehashed ECDSA input", digest, ecdsa.DIGEST_LEN)
        return self._finish(self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))


class EcdsaSuite(BaseSuite):
    def __init__(self, info: AlgorithmInfo, curve: ec.EllipticCurve, crv: str, alg: str) -> None:
        super().__init__(info)
        self._curve, self._crv, self._alg = curve, crv, alg
        self.params = ecdsa.CURVES[info.name]

    def generate(self) -> bytes:
        key = ec.generate_private_key(self._curve)
        return key.private_numbers().private_value.to_bytes(32, "big")

    def load_private(self, private: bytes) -> EcdsaPrivate:
        raw = require_len("private_key", self.info.name, private, 32)
        try:
            key = ec.derive_private_key(int.from_bytes(raw, "big"), self._curve)
        except ValueError:
            raise InvalidInputError("private_key", "scalar is out of range for the curve") from None
        return EcdsaPrivate(key, self._crv, self._alg, self.params)

    def load_public(self, public: bytes) -> EcdsaPublic:
        """Takes the SEC 1 point, uncompressed (65 bytes) or compressed (33)."""
        raw = require_len("public_key", self.info.name, public, 65, 33)
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, raw)
        except ValueError:
            raise InvalidInputError("public_key", "not a point on the curve") from None
        return EcdsaPublic(key, self._crv, self._alg)


# --- RSA -----------------------------------------------------------------------

_PSS_SIGN = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=_SHA256_LEN)
_PSS_VERIFY = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)


def _oaep(aad: bytes) -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=bytes(aad) or None
    )


class RsaPublic(SignaturePublicKey):
    def __init__(self, key: rsa.RSAPublicKey) -> None:
        self._key = key

    def raw(self) -> bytes:
        """DER SubjectPublicKeyInfo (RFC 8017 key, rsaEncryption OID)."""
        return self._key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def pem(self) -> str:
        return spki_pem_of(self._key)

    def jwk(self, kid: str) -> dict:
        numbers = self._key.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return jwk(kid, "RSA", "PS256", n=b64url(n), e=b64url(e))

    def _verify(self, data: bytes, signature: bytes) -> bool:
        self._key.verify(signature, data, _PSS_VERIFY, hashes.SHA256())
        return True

    def verify_with(self, data: bytes, signature: bytes, *, pkcs1v15: bool = False) -> bool:
        """PSS (any salt length) or, ``pkcs1v15``, RSASSA-PKCS1-v1_5; over SHA-256."""
        if not pkcs1v15:
            return self.verify(data, signature)
        try:
            self._key.verify(bytes(signature), bytes(data), padding.PKCS1v15(), hashes.SHA256())
            return True
        except Exception:  # noqa: BLE001 - malformed or wrong means "not valid"
            return False

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        limit = self._key.key_size // 8 - 2 * _SHA256_LEN - 2
        if len(plaintext) > limit:
            raise InvalidInputError("plaintext", f"RSA-OAEP-SHA256 takes at most {limit} bytes")
        return self._key.encrypt(bytes(plaintext), _oaep(aad))


class RsaPrivate(AsymmetricPrivateKey):
    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key
        self._public = RsaPublic(key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(bytes(data), _PSS_SIGN, hashes.SHA256())

    def sign_pkcs1v15(self, data: bytes) -> bytes:
        return self._key.sign(bytes(data), padding.PKCS1v15(), hashes.SHA256())

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._key.decrypt(bytes(ciphertext), _oaep(aad))
        except ValueError:
            raise InvalidCiphertext("RSA-OAEP decryption failed") from None


class RsaSuite(BaseSuite):
    def __init__(self, info: AlgorithmInfo, bits: int) -> None:
        super().__init__(info)
        self._bits = bits

    def generate(self) -> bytes:
        key = rsa.generate_private_key(public_exponent=65537, key_size=self._bits)
        return key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def _check(self, key: object, field: str) -> None:
        if not isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) or key.key_size != self._bits:
            raise InvalidInputError(field, f"not an {self.info.name} key")

    def load_private(self, private: bytes) -> RsaPrivate:
        try:
            key = serialization.load_der_private_key(bytes(private), password=None)
        except (ValueError, TypeError):
            raise InvalidInputError("private_key", "not an unencrypted PKCS#8 DER key") from None
        self._check(key, "private_key")
        return RsaPrivate(key)  # type: ignore[arg-type]

    def load_public(self, public: bytes) -> RsaPublic:
        try:
            key = serialization.load_der_public_key(bytes(public))
        except (ValueError, TypeError):
            raise InvalidInputError("public_key", "not a DER SubjectPublicKeyInfo") from None
        self._check(key, "public_key")
        return RsaPublic(key)  # type: ignore[arg-type]


# --- Symmetric -----------------------------------------------------------------


class _SymmetricSuite(BaseSuite):
    """32 random bytes in, a key object out; symmetric keys have no public half."""

    def generate(self) -> bytes:
        return os.urandom(32)

    def load_private(self, private: bytes) -> BasePrivateKey:
        return self._make(require_len("private_key", self.info.name, private, 32))

    def load_public(self, public: bytes) -> Any:
        raise InvalidInputError("public_key", f"{self.info.name} is symmetric: no public key")

    def _make(self, key: bytes) -> BasePrivateKey:
        raise NotImplementedError


class AeadKey(BasePrivateKey):
    def __init__(self, cipher: Any) -> None:
        self._cipher = cipher

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        return aead_seal(self._cipher, plaintext, aad)

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes:
        return aead_open(self._cipher, ciphertext, aad)


class AeadSuite(_SymmetricSuite):
    def __init__(self, info: AlgorithmInfo, cipher: Callable[[bytes], Any]) -> None:
        super().__init__(info)
        self._cipher = cipher

    def _make(self, key: bytes) -> AeadKey:
        return AeadKey(self._cipher(key))


class HkdfKey(BasePrivateKey):
    def __init__(self, ikm: bytes) -> None:
        self._ikm = ikm

    def derive(self, info: bytes, length: int, salt: bytes | None = None) -> bytes:
        """RFC 5869 HKDF-SHA256; ``length`` is 1..8160 (255 hash blocks)."""
        if not isinstance(length, int) or not 1 <= length <= _HKDF_MAX:
            raise InvalidInputError("length", f"must be between 1 and {_HKDF_MAX}")
        return hkdf_sha256(self._ikm, bytes(info), length, None if salt is None else bytes(salt))


class HkdfSuite(_SymmetricSuite):
    def _make(self, key: bytes) -> HkdfKey:
        return HkdfKey(key)


SUITES: dict[str, Callable[[AlgorithmInfo], Suite]] = {
    "Ed25519": Ed25519Suite,
    "ECDSA-P256": lambda info: EcdsaSuite(info, ec.SECP256R1(), "P-256", "ES256"),
    "ECDSA-secp256k1": lambda info: EcdsaSuite(info, ec.SECP256K1(), "secp256k1", "ES256K"),
    "RSA-2048": lambda info: RsaSuite(info, 2048),
    "RSA-4096": lambda info: RsaSuite(info, 4096),
    "AES-256-GCM": lambda info: AeadSuite(info, AESGCM),
    "ChaCha20-Poly1305": lambda info: AeadSuite(info, ChaCha20Poly1305),
    "HKDF-SHA256": HkdfSuite,
}

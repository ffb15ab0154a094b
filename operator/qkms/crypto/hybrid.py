"""Hybrid suites: composite ML-DSA-65 + Ed25519 signatures, and the X-Wing KEM.

Composite signature (id-MLDSA65-Ed25519-SHA512), following
draft-ietf-lamps-pq-composite-sigs-13 through -19 (the construction and the
wire format are unchanged over those revisions), checked against the
draft's own test vector (tests/vectors/composite-sigs):

    M'  = Prefix || Label || len(ctx) || ctx || SHA-512(M)      (ctx = b"")
    sig = ML-DSA-65.Sign(mldsaSK, M', ctx=Label) || Ed25519.Sign(edSK, M')

with Prefix = "CompositeAlgorithmSignatures2025" and
Label = "COMPSIG-MLDSA65-Ed25519-SHA512". The public key is
mldsaPK (1952) || edPK (32), the signature mldsaSig (3309) || edSig (64), and
the stored private key is the draft's private-key serialization: ML-DSA seed
(32) || Ed25519 private key (32). Both component signatures must verify.
SPKI uses the draft's OID 1.3.6.1.5.5.7.6.48 with the raw public key as the
BIT STRING; the JWK is ``kty: AKP, alg: ML-DSA-65-Ed25519`` with the same
raw key in ``pub`` (draft-ietf-jose-pq-composite-sigs).

X-Wing, following draft-connolly-cfrg-xwing-kem-10 and checked against its
test vectors:

    expanded = SHAKE-256(sk, 96 bytes)
    (pk_M, sk_M) = ML-KEM-768.KeyGen_internal(expanded[0:32], expanded[32:64])
    sk_X = expanded[64:96];  pk_X = X25519(sk_X, 9)
    ss = SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)   (label LAST)

with XWingLabel = 5c2e2f2f5e5c. The stored private key is the 32-byte seed,
the public key pk_M || pk_X (1216 bytes), the ciphertext ct_M || ct_X (1120).
SPKI uses the draft's id-XWing, 1.3.6.1.4.1.62253.25722. An X25519 share
that yields the all-zero secret (a small-order point) is refused by
``cryptography``; qkms reports it as InvalidCiphertext on decapsulation and
as an invalid public key on encapsulation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from qkms.errors import InvalidInputError
from qkms.model.algorithms import AlgorithmInfo, resolve_algorithm

from ._common import (
    AsymmetricPrivateKey,
    BaseSuite,
    KemPrivateKey,
    KemPublicKey,
    SignaturePublicKey,
    require_len,
)
from .base import InvalidCiphertext, Suite
from .classical import Ed25519Private, Ed25519Public, Ed25519Suite
from .encoding import b64url, jwk, pem, spki_der
from .pqc import MlDsaPrivate, MlDsaPublic, mldsa_suite

# --- Composite ML-DSA-65 + Ed25519 ---------------------------------------------

COMPOSITE_PREFIX = b"CompositeAlgorithmSignatures2025"
COMPOSITE_LABEL = b"COMPSIG-MLDSA65-Ed25519-SHA512"
COMPOSITE_OID = "1.3.6.1.5.5.7.6.48"
COMPOSITE_JOSE_ALG = "ML-DSA-65-Ed25519"
_MLDSA65_PK, _MLDSA65_SIG, _ED_LEN, _ED_SIG = 1952, 3309, 32, 64


def composite_message(data: bytes, context: bytes = b"") -> bytes:
    """M' of the draft; qkms always signs with the empty application context."""
    if len(context) > 255:
        raise InvalidInputError("context", "at most 255 bytes")
    return (
        COMPOSITE_PREFIX
        + COMPOSITE_LABEL
        + bytes([len(context)])
        + bytes(context)
        + hashlib.sha512(bytes(data)).digest()
    )


class CompositePublic(SignaturePublicKey):
    def __init__(self, mldsa_key: MlDsaPublic, ed_key: Ed25519Public) -> None:
        self._mldsa, self._ed = mldsa_key, ed_key

    def raw(self) -> bytes:
        return self._mldsa.raw() + self._ed.raw()

    def pem(self) -> str:
        return pem(spki_der(COMPOSITE_OID, self.raw()))

    def jwk(self, kid: str) -> dict:
        return jwk(kid, "AKP", COMPOSITE_JOSE_ALG, pub=b64url(self.raw()))

    def _verify(self, data: bytes, signature: bytes) -> bool:
        if len(signature) != _MLDSA65_SIG + _ED_SIG:
            return False
        message = composite_message(data)
        mldsa_ok = self._mldsa.verify_with_context(
            message, signature[:_MLDSA65_SIG], COMPOSITE_LABEL
        )
        ed_ok = self._ed.verify(message, signature[_MLDSA65_SIG:])
        return mldsa_ok and ed_ok


class CompositePrivate(AsymmetricPrivateKey):
    def __init__(self, mldsa_key: MlDsaPrivate, ed_key: Ed25519Private) -> None:
        self._mldsa, self._ed = mldsa_key, ed_key
        self._public = CompositePublic(mldsa_key.public(), ed_key.public())

    def sign(self, data: bytes) -> bytes:
        message = composite_message(data)
        return self._mldsa.sign_with_context(message, COMPOSITE_LABEL) + self._ed.sign(message)


class CompositeSuite(BaseSuite):
    def __init__(self, info: AlgorithmInfo) -> None:
        super().__init__(info)
        self._mldsa = mldsa_suite(resolve_algorithm("ML-DSA-65"))
        self._ed = Ed25519Suite(resolve_algorithm("Ed25519"))

    def generate(self) -> bytes:
        return self._mldsa.generate() + self._ed.generate()

    def load_private(self, private: bytes) -> CompositePrivate:
        raw = require_len("private_key", self.info.name, private, 64)
        return CompositePrivate(self._mldsa.load_private(raw[:32]), self._ed.load_private(raw[32:]))

    def load_public(self, public: bytes) -> CompositePublic:
        raw = require_len("public_key", self.info.name, public, _MLDSA65_PK + _ED_LEN)
        return CompositePublic(
            self._mldsa.load_public(raw[:_MLDSA65_PK]), self._ed.load_public(raw[_MLDSA65_PK:])
        )


# --- X-Wing --------------------------------------------------------------------

XWING_LABEL = b"\\.//^\\"
XWING_OID = "1.3.6.1.4.1.62253.25722"
_PK_M, _CT_M, _X_LEN = 1184, 1088, 32


def xwing_combiner(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


class XWingPublic(KemPublicKey):
    algorithm = "X-Wing"

    def __init__(self, pk_m: mlkem.MLKEM768PublicKey, pk_x: x25519.X25519PublicKey) -> None:
        self._pk_m, self._pk_x = pk_m, pk_x
        self._pk_x_raw = pk_x.public_bytes_raw()

    def raw(self) -> bytes:
        return self._pk_m.public_bytes_raw() + self._pk_x_raw

    def pem(self) -> str:
        return pem(spki_der(XWING_OID, self.raw()))

    def encapsulate(self) -> tuple[bytes, bytes]:
        ephemeral = x25519.X25519PrivateKey.generate()
        ct_x = ephemeral.public_key().public_bytes_raw()
        try:
            ss_x = ephemeral.exchange(self._pk_x)
        except ValueError:
            raise InvalidInputError("public_key", "X-Wing X25519 share is small-order") from None
        ss_m, ct_m = self._pk_m.encapsulate()
        return ct_m + ct_x, xwing_combiner(ss_m, ss_x, ct_x, self._pk_x_raw)


class XWingPrivate(KemPrivateKey):
    algorithm = "X-Wing"
    ciphertext_len = _CT_M + _X_LEN

    def __init__(self, seed: bytes) -> None:
        expanded = hashlib.shake_256(seed).digest(96)
        self._sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        self._sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
        self._pk_x = self._sk_x.public_key().public_bytes_raw()
        self._public = XWingPublic(self._sk_m.public_key(), self._sk_x.public_key())

    def _decapsulate(self, ciphertext: bytes) -> bytes:
        ct_m, ct_x = ciphertext[:_CT_M], ciphertext[_CT_M:]
        ss_m = self._sk_m.decapsulate(ct_m)
        try:
            ss_x = self._sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
        except ValueError:
            raise InvalidCiphertext("X-Wing X25519 share is a small-order point") from None
        return xwing_combiner(ss_m, ss_x, ct_x, self._pk_x)


class XWingSuite(BaseSuite):
    def generate(self) -> bytes:
        return os.urandom(32)

    def load_private(self, private: bytes) -> XWingPrivate:
        return XWingPrivate(require_len("private_key", self.info.name, private, 32))

    def load_public(self, public: bytes) -> XWingPublic:
        raw = require_len("public_key", self.info.name, public, _PK_M + _X_LEN)
        try:
            pk_m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_PK_M])
        except ValueError:
            raise InvalidInputError("public_key", "X-Wing ML-KEM-768 part is invalid") from None
        return XWingPublic(pk_m, x25519.X25519PublicKey.from_public_bytes(raw[_PK_M:]))


SUITES: dict[str, Callable[[AlgorithmInfo], Suite]] = {
    "Ed25519+ML-DSA-65": CompositeSuite,
    "X-Wing": XWingSuite,
}

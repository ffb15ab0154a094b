"""Post-quantum suites: ML-DSA (FIPS 204), ML-KEM (FIPS 203), Falcon (round 3).

Stored private forms:

================  ===========================================================
ML-DSA-44/65/87   32-byte seed xi (FIPS 204 Algorithm 1); expanded on load
ML-KEM-768/1024   64-byte seed d || z (FIPS 203 Algorithm 19); expanded on load
ML-KEM-512        1632-byte FIPS 203 decapsulation key dk, as PQClean (via
                  pqcrypto) emits it: pqcrypto has no seed API. Loading checks
                  the FIPS 203 section 7.3 hash check and the ek modulus check.
Falcon-512/1024   PQClean secret key || PQClean public key (1281+897 and
                  2305+1793 bytes). PQClean's secret key holds f, g, F but not
                  h, and offers no call to recompute h, so the public key is
                  stored beside it; loading re-checks the pair by a test
                  signature so a mismatched pair fails loudly, not later.
================  ===========================================================

ML-DSA signs in pure mode with an empty context (FIPS 204 Algorithm 2); the
composite suite reaches the context-taking variants. Deterministic signing is
not offered by ``cryptography``, so ML-DSA signatures are hedged (randomized).

ML-DSA public keys serialize to SPKI via ``cryptography`` (OIDs of
draft-ietf-lamps-dilithium-certificates) and to JWK as ``kty: AKP`` per
draft-ietf-cose-dilithium. ML-KEM-512's SPKI, which ``cryptography`` cannot
write, uses id-alg-ml-kem-512 (2.16.840.1.101.3.4.4.1) with the raw ek as the
BIT STRING (draft-ietf-lamps-kyber-certificates). Falcon has neither an SPKI
nor a JWK here: no OID or JOSE registration exists for round-3 Falcon
(FN-DSA, FIPS 206, is not final and will differ).

Falcon signatures are PQClean's detached, compressed, variable-length format.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from pqcrypto.kem import ml_kem_512
from pqcrypto.sign import falcon_512, falcon_1024, ml_dsa_44, ml_dsa_65, ml_dsa_87

from qkms.errors import InvalidInputError
from qkms.model.algorithms import AlgorithmInfo

from ._common import (
    AsymmetricPrivateKey,
    BaseSuite,
    KemPrivateKey,
    KemPublicKey,
    SignaturePublicKey,
    require_len,
    spki_pem_of,
)
from .base import Suite
from .encoding import b64url, jwk, pem, spki_der

# --- ML-DSA --------------------------------------------------------------------


class MlDsaPublic(SignaturePublicKey):
    def __init__(self, key: Any, algorithm: str) -> None:
        self._key, self._algorithm = key, algorithm

    def raw(self) -> bytes:
        return self._key.public_bytes_raw()

    def pem(self) -> str:
        return spki_pem_of(self._key)

    def jwk(self, kid: str) -> dict:
        return jwk(kid, "AKP", self._algorithm, pub=b64url(self.raw()))

    def verify_with_context(self, data: bytes, signature: bytes, context: bytes) -> bool:
        """Pure ML-DSA.Verify with a context string; used by the composite suite."""
        try:
            self._key.verify(bytes(signature), bytes(data), bytes(context))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not valid"
            return False

    def _verify(self, data: bytes, signature: bytes) -> bool:
        return self.verify_with_context(data, signature, b"")


class MlDsaPrivate(AsymmetricPrivateKey):
    """An ML-DSA key from its seed.  Pure signing with the empty context (what qkms's SIGN
    is) runs PQClean's ML-DSA (via pqcrypto), about 1.4x faster here than OpenSSL's, over
    the FIPS 204 expanded key that dilithium-py's ``key_derive`` makes from the seed once,
    on the first signature (NIST's KAT ``sk`` values check it); everything else, and the
    context-taking signatures of the composite suite, stays with ``cryptography``.
    Both are hedged, and each verifies the other's signatures."""

    _public: MlDsaPublic

    def __init__(self, key: Any, algorithm: str, seed: bytes | None = None) -> None:
        self._key, self._seed = key, seed
        self._public = MlDsaPublic(key.public_key(), algorithm)
        self._fast = _MLDSA_FAST.get(algorithm)
        self._expanded: bytes | None = None

    def public(self) -> MlDsaPublic:
        return self._public

    def sign_with_context(self, data: bytes, context: bytes) -> bytes:
        return self._key.sign(bytes(data), bytes(context))

    def sign(self, data: bytes) -> bytes:
        if self._fast is None or self._seed is None:
            return self.sign_with_context(data, b"")
        derive, signer = self._fast
        if self._expanded is None:  # a race in two threads derives the same bytes twice
            self._expanded = derive(self._seed)[1]
        return signer.sign(self._expanded, bytes(data))


class MlDsaSuite(BaseSuite):
    SEED_LEN = 32

    def __init__(self, info: AlgorithmInfo, private_cls: Any, public_cls: Any) -> None:
        super().__init__(info)
        self._private_cls, self._public_cls = private_cls, public_cls

    def generate(self) -> bytes:
        """A fresh xi from the OS RBG: exactly what ML-DSA.KeyGen draws (FIPS 204 Alg. 1)."""
        return os.urandom(self.SEED_LEN)

    def load_private(self, private: bytes) -> MlDsaPrivate:
        seed = require_len("private_key", self.info.name, private, self.SEED_LEN)
        return MlDsaPrivate(self._private_cls.from_seed_bytes(seed), self.info.name, seed)

    def load_public(self, public: bytes) -> MlDsaPublic:
        try:
            key = self._public_cls.from_public_bytes(bytes(public))
        except ValueError:
            raise InvalidInputError("public_key", f"not an {self.info.name} public key") from None
        return MlDsaPublic(key, self.info.name)


# --- ML-KEM via cryptography (768, 1024) ---------------------------------------


class MlKemPublic(KemPublicKey):
    def __init__(self, key: Any, algorithm: str) -> None:
        self._key, self.algorithm = key, algorithm

    def raw(self) -> bytes:
        return self._key.public_bytes_raw()

    def pem(self) -> str:
        return spki_pem_of(self._key)

    def encapsulate(self) -> tuple[bytes, bytes]:
        shared_secret, ciphertext = self._key.encapsulate()  # cryptography's order is (ss, ct)
        return ciphertext, shared_secret


class MlKemPrivate(KemPrivateKey):
    def __init__(self, key: Any, algorithm: str, ciphertext_len: int) -> None:
        self._key, self.algorithm, self.ciphertext_len = key, algorithm, ciphertext_len
        self._public = MlKemPublic(key.public_key(), algorithm)

    def _decapsulate(self, ciphertext: bytes) -> bytes:
        return self._key.decapsulate(ciphertext)


class MlKemSuite(BaseSuite):
    SEED_LEN = 64

    def __init__(
        self, info: AlgorithmInfo, private_cls: Any, public_cls: Any, ciphertext_len: int
    ) -> None:
        super().__init__(info)
        self._private_cls, self._public_cls = private_cls, public_cls
        self._ciphertext_len = ciphertext_len

    def generate(self) -> bytes:
        """Fresh d || z from the OS RBG, as ML-KEM.KeyGen draws them (FIPS 203 Alg. 19)."""
        return os.urandom(self.SEED_LEN)

    def load_private(self, private: bytes) -> MlKemPrivate:
        seed = require_len("private_key", self.info.name, private, self.SEED_LEN)
        return MlKemPrivate(
            self._private_cls.from_seed_bytes(seed), self.info.name, self._ciphertext_len
        )

    def load_public(self, public: bytes) -> MlKemPublic:
        try:
            key = self._public_cls.from_public_bytes(bytes(public))
        except ValueError:
            raise InvalidInputError("public_key", f"not an {self.info.name} public key") from None
        return MlKemPublic(key, self.info.name)


# --- ML-KEM-512 via pqcrypto (PQClean) -----------------------------------------

_Q = 3329
_ML_KEM_512_OID = "2.16.840.1.101.3.4.4.1"
_K512 = 2
_EK_512 = ml_kem_512.PUBLIC_KEY_SIZE  # 800
_DK_PKE_512 = 384 * _K512  # 768


def ek_modulus_ok(ek: bytes, k: int) -> bool:
    """FIPS 203 section 7.2 modulus check: every 12-bit coefficient of t is < q.

    PQClean's encapsulation does not perform it, so qkms does on load.
    """
    t = ek[: 384 * k]
    for i in range(0, len(t), 3):
        b0, b1, b2 = t[i], t[i + 1], t[i + 2]
        if (b0 | (b1 & 0x0F) << 8) >= _Q or (b1 >> 4 | b2 << 4) >= _Q:
            return False
    return True


class MlKem512Public(KemPublicKey):
    algorithm = "ML-KEM-512"

    def __init__(self, ek: bytes) -> None:
        self._ek = ek

    def raw(self) -> bytes:
        return self._ek

    def pem(self) -> str:
        return pem(spki_der(_ML_KEM_512_OID, self._ek))

    def encapsulate(self) -> tuple[bytes, bytes]:
        return ml_kem_512.encrypt(self._ek)


class MlKem512Private(KemPrivateKey):
    algorithm = "ML-KEM-512"
    ciphertext_len = ml_kem_512.CIPHERTEXT_SIZE

    def __init__(self, dk: bytes) -> None:
        self._dk = dk
        self._public = MlKem512Public(dk[_DK_PKE_512 : _DK_PKE_512 + _EK_512])

    def _decapsulate(self, ciphertext: bytes) -> bytes:
        return ml_kem_512.decrypt(self._dk, ciphertext)


class MlKem512Suite(BaseSuite):
    def generate(self) -> bytes:
        _, dk = ml_kem_512.generate_keypair()
        return dk

    def load_private(self, private: bytes) -> MlKem512Private:
        dk = require_len("private_key", self.info.name, private, ml_kem_512.SECRET_KEY_SIZE)
        ek = dk[_DK_PKE_512 : _DK_PKE_512 + _EK_512]
        h = dk[_DK_PKE_512 + _EK_512 : _DK_PKE_512 + _EK_512 + 32]
        if hashlib.sha3_256(ek).digest() != h or not ek_modulus_ok(ek, _K512):
            raise InvalidInputError("private_key", "ML-KEM-512 key fails the FIPS 203 checks")
        return MlKem512Private(dk)

    def load_public(self, public: bytes) -> MlKem512Public:
        ek = require_len("public_key", self.info.name, public, _EK_512)
        if not ek_modulus_ok(ek, _K512):
            raise InvalidInputError("public_key", "ML-KEM-512 key fails the FIPS 203 modulus check")
        return MlKem512Public(ek)


# --- Falcon via pqcrypto (PQClean) ---------------------------------------------

_PAIR_CHECK = b"qkms falcon pair check"


class FalconPublic(SignaturePublicKey):
    def __init__(self, module: ModuleType, pk: bytes) -> None:
        self._module, self._pk = module, pk

    def raw(self) -> bytes:
        return self._pk

    def _verify(self, data: bytes, signature: bytes) -> bool:
        return self._module.verify(self._pk, data, signature)


class FalconPrivate(AsymmetricPrivateKey):
    def __init__(self, module: ModuleType, sk: bytes, pk: bytes) -> None:
        self._module, self._sk = module, sk
        self._public = FalconPublic(module, pk)

    def sign(self, data: bytes) -> bytes:
        return self._module.sign(self._sk, bytes(data))


class FalconSuite(BaseSuite):
    def __init__(self, info: AlgorithmInfo, module: ModuleType, logn: int) -> None:
        super().__init__(info)
        self._module, self._logn = module, logn

    def generate(self) -> bytes:
        pk, sk = self._module.generate_keypair()
        return sk + pk

    def load_private(self, private: bytes) -> FalconPrivate:
        m = self._module
        size = m.SECRET_KEY_SIZE + m.PUBLIC_KEY_SIZE
        raw = require_len("private_key", self.info.name, private, size)
        sk, pk = raw[: m.SECRET_KEY_SIZE], raw[m.SECRET_KEY_SIZE :]
        if sk[0] != 0x50 + self._logn or pk[0] != self._logn:
            raise InvalidInputError("private_key", f"not an {self.info.name} key pair")
        key = FalconPrivate(m, sk, pk)
        if not key.public().verify(_PAIR_CHECK, key.sign(_PAIR_CHECK)):
            raise InvalidInputError("private_key", f"{self.info.name} key halves do not match")
        return key

    def load_public(self, public: bytes) -> FalconPublic:
        pk = require_len("public_key", self.info.name, public, self._module.PUBLIC_KEY_SIZE)
        if pk[0] != self._logn:
            raise InvalidInputError("public_key", f"not an {self.info.name} public key")
        return FalconPublic(self._module, pk)


MLDSA_KEYS: dict[str, tuple[Any, Any]] = {
    "ML-DSA-44": (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey),
    "ML-DSA-65": (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey),
    "ML-DSA-87": (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey),
}


# Pure ML-DSA signing: (the seed's expansion to the FIPS 204 private key, the signer).
_MLDSA_FAST: dict[str, tuple[Callable[[bytes], tuple[bytes, bytes]], ModuleType]] = {
    "ML-DSA-44": (ML_DSA_44.key_derive, ml_dsa_44),
    "ML-DSA-65": (ML_DSA_65.key_derive, ml_dsa_65),
    "ML-DSA-87": (ML_DSA_87.key_derive, ml_dsa_87),
}


def mldsa_suite(info: AlgorithmInfo) -> MlDsaSuite:
    return MlDsaSuite(info, *MLDSA_KEYS[info.name])


SUITES: dict[str, Callable[[AlgorithmInfo], Suite]] = {
    **{name: mldsa_suite for name in MLDSA_KEYS},
    "ML-KEM-512": MlKem512Suite,
    "ML-KEM-768": lambda i: MlKemSuite(i, mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey, 1088),
    "ML-KEM-1024": lambda i: MlKemSuite(
        i, mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey, 1568
    ),
    "Falcon-512": lambda i: FalconSuite(i, falcon_512, 9),
    "Falcon-1024": lambda i: FalconSuite(i, falcon_1024, 10),
}

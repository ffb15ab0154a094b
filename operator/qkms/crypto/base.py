"""One interface for every algorithm suite.

A suite generates private material in its smallest standard stored form and
loads it into key objects.  Loaded objects are what the providers cache, so
that a key is parsed (and, for ML-DSA, expanded from its seed) once rather
than on every operation.  Operations a family does not offer raise
``UnsupportedOperation``; the registry refuses them earlier with a clear
message, so reaching one is a programming error.
"""

from __future__ import annotations

from typing import Protocol

from qkms.model.algorithms import AlgorithmInfo


class UnsupportedOperation(Exception):
    """The suite has no such operation (the registry should have refused it)."""


class InvalidCiphertext(Exception):
    """Authentication of a ciphertext failed, or it is malformed."""


class PublicKey(Protocol):
    def raw(self) -> bytes:
        """The algorithm's standard public encoding (DER SPKI for RSA)."""
        ...

    def pem(self) -> str | None:
        """SPKI PEM where the algorithm has a registered OID, else None."""
        ...

    def jwk(self, kid: str) -> dict | None:
        """A public JWK where a JOSE registration or draft exists, else None."""
        ...

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True if valid; False for any invalid or malformed signature."""
        ...

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """Public-key encryption (RSA-OAEP, or KEM + AES-256-GCM for KEMs)."""
        ...

    def encapsulate(self) -> tuple[bytes, bytes]:
        """Returns (ciphertext, shared_secret)."""
        ...


class PrivateKey(Protocol):
    def public(self) -> PublicKey | None:
        """None for symmetric keys."""
        ...

    def sign(self, data: bytes) -> bytes: ...

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """AEAD: returns nonce || ciphertext || tag.  Asymmetric: via public()."""
        ...

    def decrypt(self, ciphertext: bytes, aad: bytes) -> bytes:
        """Raises InvalidCiphertext when authentication fails."""
        ...

    def decapsulate(self, ciphertext: bytes) -> bytes: ...

    def derive(self, info: bytes, length: int, salt: bytes | None = None) -> bytes: ...


class Suite(Protocol):
    info: AlgorithmInfo

    def generate(self) -> bytes:
        """New private material in its stored form (a seed where one is defined)."""
        ...

    def load_private(self, private: bytes) -> PrivateKey: ...

    def load_public(self, public: bytes) -> PublicKey: ...

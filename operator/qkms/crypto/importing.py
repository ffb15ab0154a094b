"""Bring your own key: turn an existing private key into qkms's stored form.

PEM (PKCS#8 or traditional, optionally encrypted) for Ed25519, ECDSA P-256 and
secp256k1, RSA-2048/4096; raw 32 bytes for AES-256-GCM, ChaCha20-Poly1305 and
HKDF.  The algorithm is read from the key itself; a caller's ``algorithm`` must
agree.  Errors name the field and never echo key material.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from qkms.errors import InvalidInputError, UnsupportedAlgorithmError
from qkms.model.algorithms import resolve_algorithm

RAW_SYMMETRIC = {"AES-256-GCM", "ChaCha20-Poly1305", "HKDF-SHA256"}
CURVES = {"secp256r1": "ECDSA-P256", "secp256k1": "ECDSA-secp256k1"}


def from_pem(pem: bytes, password: bytes | None = None) -> tuple[str, bytes]:
    """(canonical algorithm, stored private form) of a PEM private key."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError):
        raise InvalidInputError("pem", "not a readable PEM private key (wrong password, "
                                       "corrupt, or not a private key)") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519", key.private_bytes_raw()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        name = CURVES.get(key.curve.name)
        if name is None:
            raise UnsupportedAlgorithmError("pem", f"curve {key.curve.name} is not supported")
        return name, key.private_numbers().private_value.to_bytes(32, "big")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size not in (2048, 4096):
            raise UnsupportedAlgorithmError("pem", f"RSA-{key.key_size} is not supported "
                                                   "(2048 or 4096)")
        der = key.private_bytes(serialization.Encoding.DER,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return f"RSA-{key.key_size}", der
    raise UnsupportedAlgorithmError("pem", f"{type(key).__name__} keys are not supported")


def from_raw(raw: bytes, algorithm: str) -> tuple[str, bytes]:
    info = resolve_algorithm(algorithm)
    if info.name not in RAW_SYMMETRIC:
        raise InvalidInputError("algorithm",
                                f"raw import is for {', '.join(sorted(RAW_SYMMETRIC))}")
    if len(raw) != 32:
        raise InvalidInputError("raw", f"must be 32 bytes, not {len(raw)}")
    return info.name, raw


def from_secret_data(data: dict[str, bytes], key: str | None,
                     algorithm: str | None) -> tuple[str, bytes]:
    """Key material from a Secret's data (``spec.importFrom``): a PEM private key, or 32
    raw bytes for a symmetric ``algorithm``. ``key`` picks the data key; else the only one."""
    if key is None:
        if len(data) != 1:
            raise InvalidInputError("spec.importFrom.key",
                                    f"the Secret has {len(data)} keys; name the one to import")
        key = next(iter(data))
    if key not in data:
        raise InvalidInputError("spec.importFrom.key", f"the Secret has no key {key!r}")
    value = data[key]
    if value.lstrip().startswith(b"-----BEGIN"):
        found, private = from_pem(value)
        if algorithm and resolve_algorithm(algorithm).name != found:
            raise InvalidInputError("spec.algorithm", f"the imported PEM holds a {found} key")
        return found, private
    if algorithm is None:
        raise InvalidInputError("spec.algorithm", "is required to import raw key bytes")
    return from_raw(value, algorithm)

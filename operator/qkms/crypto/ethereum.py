"""Ethereum addresses of secp256k1 keys.

The address is the last 20 bytes of Keccak-256 (the original Keccak padding, not
FIPS 202 SHA3-256) of the uncompressed public point without its 0x04 prefix (Ethereum
yellow paper, appendix F), written with the EIP-55 mixed-case checksum.  Keccak-256
comes from ``eth-hash`` over pycryptodome, which Ethereum's own Python tools use.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_hash.auto import keccak

from qkms.errors import InvalidInputError

ALGORITHM = "ECDSA-secp256k1"


def keccak256(data: bytes) -> bytes:
    return keccak(bytes(data))


def checksum(address: bytes) -> str:
    """EIP-55: a hex letter is upper case where the same nibble of Keccak-256 of the
    lower-case hex address is 8 or more."""
    text = bytes(address).hex()
    mask = keccak256(text.encode("ascii")).hex()
    return "0x" + "".join(ch.upper() if ch.isalpha() and int(mask[i], 16) >= 8 else ch
                          for i, ch in enumerate(text))


def address(public_key: bytes) -> str:
    """The checksummed ``0x...`` address of a secp256k1 public key (SEC 1, 65 or 33 bytes)."""
    public_key = bytes(public_key)
    if len(public_key) == 33:
        try:
            point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public_key)
        except ValueError:
            raise InvalidInputError("public_key", "not a secp256k1 point") from None
        public_key = point.public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    if len(public_key) != 65 or public_key[0] != 4:
        raise InvalidInputError("public_key", "an Ethereum address needs a secp256k1 point "
                                "(65 bytes uncompressed or 33 compressed)")
    return checksum(keccak256(public_key[1:])[-20:])


def address_of(algorithm: str, public_key: bytes | None) -> str | None:
    """The address where the key is secp256k1 with a public key, else None."""
    if algorithm != ALGORITHM or public_key is None:
        return None
    return address(public_key)

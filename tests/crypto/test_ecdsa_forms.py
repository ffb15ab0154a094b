"""ECDSA forms for other ecosystems, checked by code that shares none with qkms.

* libsecp256k1 (coincurve), which refuses high-S signatures as Bitcoin and Ethereum do,
  verifies qkms's secp256k1 signatures and recovers keys from qkms's recovery ids; and
  qkms's recovery agrees with libsecp256k1's own recoverable signatures.
* eth-keys (Ethereum's Python key library) derives the same addresses.
* The curve constants are checked against OpenSSL's curves; EIP-55 against the EIP's
  own examples; P-256 recovery against the plain-Python verifier in refimpl.py.
"""

from __future__ import annotations

import hashlib
import os

import coincurve
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from eth_keys import keys as eth_keys

from qkms.crypto import ecdsa, ethereum, suite_for
from qkms.errors import InvalidInputError
from tests.crypto import refimpl

OPENSSL = {"ECDSA-secp256k1": ec.SECP256K1(), "ECDSA-P256": ec.SECP256R1()}


def point(name: str, scalar: int) -> tuple[int, int]:
    numbers = ec.derive_private_key(scalar, OPENSSL[name]).public_key().public_numbers()
    return numbers.x, numbers.y


@pytest.mark.parametrize("name", list(ecdsa.CURVES))
def test_curve_constants_are_openssls(name) -> None:
    curve = ecdsa.CURVES[name]
    assert point(name, 1) == (curve.gx, curve.gy)
    assert point(name, curve.n - 1) == (curve.gx, curve.p - curve.gy)  # (n-1)G = -G: n and p
    assert (curve.gy ** 2 - curve.gx ** 3 - curve.a * curve.gx - curve.b) % curve.p == 0
    with pytest.raises(ValueError):
        ec.derive_private_key(curve.n, OPENSSL[name])  # n is the order: out of range


def test_secp256k1_signatures_are_always_low_s_and_libsecp256k1_accepts_them(keys) -> None:
    key = keys.private("ECDSA-secp256k1")
    strict = coincurve.PublicKey(key.public().raw())
    for i in range(200):
        message = b"message %d" % i
        signature = key.sign(message)
        assert ecdsa.split(signature)[1] <= ecdsa.SECP256K1.half_n
        assert strict.verify(signature, message)  # libsecp256k1 refuses high-S
        digest = hashlib.sha256(message).digest()
        assert strict.verify(key.sign_digest(digest), digest, hasher=None)


def test_high_s_still_verifies_in_qkms_but_not_in_libsecp256k1(keys) -> None:
    key = keys.private("ECDSA-secp256k1")
    r, s = ecdsa.split(key.sign(b"m"))
    high = ecdsa.to_der(r, ecdsa.SECP256K1.n - s)
    assert key.public().verify(b"m", high)  # FIPS 186 and OpenSSL accept both
    assert not coincurve.PublicKey(key.public().raw()).verify(high, b"m")
    assert key.public().verify_with(b"m", ecdsa.to_raw(r, ecdsa.SECP256K1.n - s))


def test_p256_keeps_the_standard_behaviour(keys) -> None:
    """Not normalized: about half of OpenSSL's P-256 signatures are high-S."""
    key = keys.private("ECDSA-P256")
    highs = sum(ecdsa.split(key.sign(b"m%d" % i))[1] > ecdsa.P256.half_n for i in range(64))
    assert 0 < highs < 64  # fails with probability 2^-63


@pytest.mark.parametrize("name", list(ecdsa.CURVES))
def test_verify_takes_der_and_raw_and_refuses_malformed(name, keys) -> None:
    key = keys.private(name)
    public = key.public()
    der = key.sign(b"m")
    raw = ecdsa.to_raw(*ecdsa.split(der))
    assert len(raw) == 64
    assert public.verify(b"m", der) and public.verify(b"m", raw)
    assert public.verify_with(b"m", raw, signature_format="raw")
    assert not public.verify_with(b"m", raw, signature_format="der")
    assert not public.verify_with(b"m", der, signature_format="raw")
    for bad in (raw[:63], raw + b"\0", bytes(64), der[:-1], b""):
        assert not public.verify(b"m", bad)
    assert not public.verify(b"n", raw)


@pytest.mark.parametrize("name", list(ecdsa.CURVES))
def test_prehashed_signs_the_digest_as_given(name, keys) -> None:
    key = keys.private(name)
    digest = os.urandom(32)
    signature = key.sign_digest(digest)
    openssl = ec.EllipticCurvePublicKey.from_encoded_point(OPENSSL[name], key.public().raw())
    openssl.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert key.public().verify_with(digest, signature, prehashed=True)
    assert not key.public().verify(digest, signature)  # not a signature over SHA-256(digest)
    with pytest.raises(InvalidInputError, match="data: .* needs 32 bytes, got 31"):
        key.sign_digest(digest[:31])


def test_recovery_agrees_with_libsecp256k1() -> None:
    for _ in range(24):
        private = coincurve.PrivateKey()
        public = private.public_key.format(compressed=False)
        digest = os.urandom(32)
        recoverable = private.sign_recoverable(digest, hasher=None)  # r || s || id
        r, s = int.from_bytes(recoverable[:32], "big"), int.from_bytes(recoverable[32:64], "big")
        assert ecdsa.recover(ecdsa.SECP256K1, digest, r, s, recoverable[64]) == public
        assert ecdsa.recovery_id(ecdsa.SECP256K1, digest, r, s, public) == recoverable[64]
        # The other id gives another key, and another digest no match at all.
        assert ecdsa.recover(ecdsa.SECP256K1, digest, r, s, recoverable[64] ^ 1) != public
        assert ecdsa.recovery_id(ecdsa.SECP256K1, os.urandom(32), r, s, public) is None


def test_qkms_recovery_ids_recover_in_libsecp256k1(keys) -> None:
    key = keys.private("ECDSA-secp256k1")
    public = key.public().raw()
    for _ in range(24):
        digest = os.urandom(32)
        r, s = ecdsa.split(key.sign_digest(digest))
        rid = ecdsa.recovery_id(ecdsa.SECP256K1, digest, r, s, public)
        assert rid in (0, 1)
        signature = ecdsa.to_raw(r, s) + bytes([rid])
        assert coincurve.PublicKey.from_signature_and_message(
            signature, digest, hasher=None).format(compressed=False) == public


def test_p256_recovery_matches_the_reference_verifier(keys) -> None:
    key = keys.private("ECDSA-P256")
    public = key.public().raw()
    for i in range(8):
        message = b"p256 %d" % i
        r, s = ecdsa.split(key.sign(message))
        digest = hashlib.sha256(message).digest()
        rid = ecdsa.recovery_id(ecdsa.P256, digest, r, s, public)
        assert rid is not None
        recovered = ecdsa.recover(ecdsa.P256, digest, r, s, rid)
        x, y = int.from_bytes(recovered[1:33], "big"), int.from_bytes(recovered[33:], "big")
        assert refimpl.ecdsa_verify("P-256", x, y, message, r, s)


@pytest.mark.parametrize("args", [(0, 1, 0), (1, 0, 0), (ecdsa.SECP256K1.n, 1, 0), (1, 1, 4)])
def test_recover_refuses_out_of_range_values(args) -> None:
    r, s, rid = args
    assert ecdsa.recover(ecdsa.SECP256K1, bytes(32), r, s, rid) is None


def test_ethereum_addresses_agree_with_eth_keys(keys) -> None:
    for which in (0, 1):
        public = keys.private("ECDSA-secp256k1", which).public().raw()
        theirs = eth_keys.PublicKey(public[1:]).to_checksum_address()
        assert ethereum.address(public) == theirs
        compressed = coincurve.PublicKey(public).format(compressed=True)
        assert ethereum.address(compressed) == theirs
    private = eth_keys.PrivateKey(os.urandom(32))
    assert ethereum.address(b"\x04" + private.public_key.to_bytes()) == \
        private.public_key.to_checksum_address()


# The examples in EIP-55 itself (https://eips.ethereum.org/EIPS/eip-55).
EIP55 = ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
         "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB", "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb"]


@pytest.mark.parametrize("expected", EIP55)
def test_eip55_checksum_examples(expected) -> None:
    assert ethereum.checksum(bytes.fromhex(expected[2:])) == expected


def test_keccak_is_not_sha3() -> None:
    assert ethereum.keccak256(b"").hex() == \
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


@pytest.mark.parametrize("bad", [b"", bytes(65), b"\x02" + bytes(32), bytes(64)])
def test_ethereum_address_refuses_what_is_not_a_secp256k1_point(bad) -> None:
    with pytest.raises(InvalidInputError, match="public_key"):
        ethereum.address(bad)


def test_suite_public_key_jwk_unchanged(keys) -> None:
    jwk = suite_for("ECDSA-secp256k1").load_public(keys.private("ECDSA-secp256k1")
                                                   .public().raw()).jwk("k")
    assert jwk["crv"] == "secp256k1" and jwk["alg"] == "ES256K"

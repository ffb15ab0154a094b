"""Classical suites against published vectors shipped in cryptography-vectors 48.

RFC 8032 (Ed25519), NIST CAVP ECDSA SigVer (P-256), the SEC/NIST-style
secp256k1 SigGen set, NIST CAVP RSASSA-PSS SigVer, NIST GCM decrypt vectors,
the ChaCha20-Poly1305 vectors from OpenSSL's test suite, RFC 5869 HKDF.
Each is driven through qkms's own stored forms and framing.
"""

from __future__ import annotations

import cryptography_vectors
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from qkms.crypto import suite_for
from qkms.crypto._common import hkdf_sha256
from qkms.crypto.base import InvalidCiphertext
from qkms.errors import InvalidInputError
from tests.crypto import refimpl
from tests.crypto.helpers import rsp_records


def _ed25519_vectors(limit: int = 64) -> list[list[bytes]]:
    with cryptography_vectors.open_vector_file("asymmetric/Ed25519/sign.input", "r") as f:
        return [[bytes.fromhex(part) for part in line.split(":")[:4]] for line in f][:limit]


@pytest.mark.parametrize("index", range(0, 64, 8))
def test_ed25519_rfc8032_sign_input(index) -> None:
    suite = suite_for("Ed25519")
    for secret, public, message, signed in _ed25519_vectors()[index : index + 8]:
        key = suite.load_private(secret[:32])
        assert key.public().raw() == public
        assert key.sign(message) == signed[:64]  # Ed25519 is deterministic
        assert suite.load_public(public).verify(message, signed[:64])
        assert refimpl.ed25519_verify(public, message, signed[:64])  # the reference agrees


def _ecdsa_p256_sigver() -> list[dict]:
    return [
        r for r in rsp_records("asymmetric/ECDSA/FIPS_186-3/SigVer.rsp")
        if r["_section"].get("_name") == "P-256,SHA-256"
    ]


def test_ecdsa_p256_nist_sigver() -> None:
    suite = suite_for("ECDSA-P256")
    records = _ecdsa_p256_sigver()
    assert len(records) == 15
    for r in records:
        point = b"\x04" + bytes.fromhex(r["Qx"].zfill(64)) + bytes.fromhex(r["Qy"].zfill(64))
        signature = encode_dss_signature(int(r["R"], 16), int(r["S"], 16))
        message, expected = bytes.fromhex(r["Msg"]), r["Result"].startswith("P")
        try:
            public = suite.load_public(point)
        except InvalidInputError:
            assert not expected  # "Q changed" may leave the curve
            continue
        assert public.verify(message, signature) is expected
        assert refimpl.ecdsa_verify(
            "P-256", int(r["Qx"], 16), int(r["Qy"], 16), message, int(r["R"], 16), int(r["S"], 16)
        ) is expected


def test_ecdsa_secp256k1_siggen_vectors() -> None:
    suite = suite_for("ECDSA-secp256k1")
    records = [
        r for r in rsp_records("asymmetric/ECDSA/SECP256K1/SigGen.txt")
        if r["_section"].get("_name") == "K-256,SHA-256"
    ]
    assert len(records) >= 10
    for r in records[:10]:
        point = b"\x04" + bytes.fromhex(r["Qx"].zfill(64)) + bytes.fromhex(r["Qy"].zfill(64))
        key = suite.load_private(bytes.fromhex(r["d"].zfill(64)))
        assert key.public().raw() == point
        message = bytes.fromhex(r["Msg"])
        signature = encode_dss_signature(int(r["R"], 16), int(r["S"], 16))
        assert suite.load_public(point).verify(message, signature)
        assert not suite.load_public(point).verify(message + b"\x00", signature)


def _rsa_spki(n: int, e: int) -> bytes:
    return rsa.RSAPublicNumbers(e, n).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("bits", [2048, 4096])
def test_rsa_pss_nist_sigver_any_salt_length(bits) -> None:
    """The CAVP set uses a 10-byte salt: qkms verifies salts other than its own 32."""
    suite = suite_for(f"RSA-{bits}")
    n, checked = None, 0
    for r in rsp_records("asymmetric/RSA/FIPS_186-2/SigVerPSS_186-3.rsp"):
        if r["_section"].get("mod") != str(bits):
            continue
        if "n" in r:
            n = int(r["n"], 16)
        if r.get("SHAAlg") != "SHA256":
            continue
        e = int(r["e"], 16)
        message, signature = bytes.fromhex(r["Msg"]), bytes.fromhex(r["S"])
        expected = r["Result"].startswith("P")
        assert suite.load_public(_rsa_spki(n, e)).verify(message, signature) is expected
        assert refimpl.rsa_pss_verify(n, e, message, signature)[0] is expected
        checked += 1
    assert checked >= 6


def _aead_check(name: str, key: bytes, nonce: bytes, ct: bytes, tag: bytes, aad: bytes,
                plaintext: bytes | None) -> None:
    aead = suite_for(name).load_private(key)
    if plaintext is None:
        with pytest.raises(InvalidCiphertext):
            aead.decrypt(nonce + ct + tag, aad)
    else:
        assert aead.decrypt(nonce + ct + tag, aad) == plaintext


def test_aes_256_gcm_nist_decrypt_vectors() -> None:
    checked = 0
    for r in rsp_records("ciphers/AES/GCM/gcmDecrypt256.rsp"):
        s = r["_section"]
        if s.get("IVlen") != "96" or s.get("Taglen") != "128" or checked >= 60:
            continue
        plaintext = None if r.get("FAIL") else bytes.fromhex(r["PT"])
        fields = (bytes.fromhex(r[k]) for k in ("Key", "IV", "CT", "Tag", "AAD"))
        _aead_check("AES-256-GCM", *fields, plaintext)
        checked += 1
    assert checked == 60


def test_chacha20_poly1305_openssl_vectors() -> None:
    checked = 0
    for r in rsp_records("ciphers/ChaCha20Poly1305/openssl.txt"):
        if len(r["IV"]) != 24 or len(r["Tag"]) != 32:
            continue
        plaintext = None if r.get("Result") else bytes.fromhex(r["Plaintext"])
        _aead_check("ChaCha20-Poly1305",
                    *(bytes.fromhex(r[k]) for k in ("Key", "IV", "Ciphertext", "Tag", "AAD")),
                    plaintext)
        checked += 1
    assert checked >= 3


def _rfc5869_cases() -> list[dict[str, str]]:
    with cryptography_vectors.open_vector_file("KDF/rfc-5869-HKDF-SHA256.txt", "r") as f:
        blocks = f.read().split("COUNT =")[1:]
    return [
        {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in b.splitlines()[1:]) if _}
        for b in blocks
    ]


def test_hkdf_sha256_rfc5869() -> None:
    """RFC 5869 A.1-A.3 through the HKDF the suite uses (the RFC's IKMs are not 32 bytes)."""
    cases = _rfc5869_cases()
    assert len(cases) == 3
    for c in cases:
        out = hkdf_sha256(bytes.fromhex(c["IKM"]), bytes.fromhex(c["info"]), int(c["L"]),
                          bytes.fromhex(c["salt"]) or None)
        assert out == bytes.fromhex(c["OKM"])


def test_hkdf_suite_is_rfc5869_with_its_stored_key(keys) -> None:
    ikm = keys.stored("HKDF-SHA256")
    key = suite_for("HKDF-SHA256").load_private(ikm)
    assert key.derive(b"ctx", 77, b"salt") == hkdf_sha256(ikm, b"ctx", 77, b"salt")
    assert key.derive(b"ctx", 77) == hkdf_sha256(ikm, b"ctx", 77, None)

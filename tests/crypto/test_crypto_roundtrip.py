"""Round trips for every algorithm in the registry, by family.

These prove the suites are self-consistent and shaped as documented; the
vector and interop tests prove they agree with the rest of the world.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkms.crypto import suite_for
from qkms.crypto.base import InvalidCiphertext, UnsupportedOperation
from qkms.errors import InvalidInputError
from qkms.model.algorithms import ALGORITHMS
from qkms.model.enums import Family
from tests.crypto.helpers import NAMES, names, parse_spki

SIGNERS = names(Family.SIGNATURE, Family.RSA)
AEADS = names(Family.AEAD)
KEMS = names(Family.KEM)
ENCRYPTERS = names(Family.AEAD, Family.RSA, Family.KEM)
ASYMMETRIC = [a.name for a in ALGORITHMS if not a.symmetric]
SYMMETRIC = [a.name for a in ALGORITHMS if a.symmetric]

STORED_LEN = {
    "Ed25519": 32, "ECDSA-secp256k1": 32, "ECDSA-P256": 32,
    "AES-256-GCM": 32, "ChaCha20-Poly1305": 32, "HKDF-SHA256": 32,
    "ML-DSA-44": 32, "ML-DSA-65": 32, "ML-DSA-87": 32,
    "Falcon-512": 1281 + 897, "Falcon-1024": 2305 + 1793,
    "ML-KEM-512": 1632, "ML-KEM-768": 64, "ML-KEM-1024": 64,
    "Ed25519+ML-DSA-65": 64, "X-Wing": 32,
}  # RSA: PKCS#8 DER, checked separately
PUBLIC_LEN = {
    "Ed25519": 32, "ECDSA-secp256k1": 65, "ECDSA-P256": 65,
    "ML-DSA-44": 1312, "ML-DSA-65": 1952, "ML-DSA-87": 2592,
    "Falcon-512": 897, "Falcon-1024": 1793,
    "ML-KEM-512": 800, "ML-KEM-768": 1184, "ML-KEM-1024": 1568,
    "Ed25519+ML-DSA-65": 1984, "X-Wing": 1216,
}  # RSA: DER SPKI, checked separately
SIGNATURE_LEN = {
    "Ed25519": 64, "ML-DSA-44": 2420, "ML-DSA-65": 3309, "ML-DSA-87": 4627,
    "Ed25519+ML-DSA-65": 3373, "RSA-2048": 256, "RSA-4096": 512,
}  # ECDSA (DER) and Falcon (compressed) vary
KEM_CT_LEN = {"ML-KEM-512": 768, "ML-KEM-768": 1088, "ML-KEM-1024": 1568, "X-Wing": 1120}
SPKI_OID = {
    "Ed25519": "1.3.101.112",
    "ECDSA-P256": "1.2.840.10045.2.1",
    "ECDSA-secp256k1": "1.2.840.10045.2.1",
    "RSA-2048": "1.2.840.113549.1.1.1",
    "RSA-4096": "1.2.840.113549.1.1.1",
    "ML-DSA-44": "2.16.840.1.101.3.4.3.17",
    "ML-DSA-65": "2.16.840.1.101.3.4.3.18",
    "ML-DSA-87": "2.16.840.1.101.3.4.3.19",
    "ML-KEM-512": "2.16.840.1.101.3.4.4.1",
    "ML-KEM-768": "2.16.840.1.101.3.4.4.2",
    "ML-KEM-1024": "2.16.840.1.101.3.4.4.3",
    "Ed25519+ML-DSA-65": "1.3.6.1.5.5.7.6.48",
    "X-Wing": "1.3.6.1.4.1.62253.25722",
}  # Falcon: no OID, pem() is None
JWK_SHAPE = {
    "Ed25519": ("OKP", "EdDSA", {"crv": "Ed25519", "x": 32}),
    "ECDSA-P256": ("EC", "ES256", {"crv": "P-256", "x": 32, "y": 32}),
    "ECDSA-secp256k1": ("EC", "ES256K", {"crv": "secp256k1", "x": 32, "y": 32}),
    "RSA-2048": ("RSA", "PS256", {"n": 256, "e": 3}),
    "RSA-4096": ("RSA", "PS256", {"n": 512, "e": 3}),
    "ML-DSA-44": ("AKP", "ML-DSA-44", {"pub": 1312}),
    "ML-DSA-65": ("AKP", "ML-DSA-65", {"pub": 1952}),
    "ML-DSA-87": ("AKP", "ML-DSA-87", {"pub": 2592}),
    "Ed25519+ML-DSA-65": ("AKP", "ML-DSA-65-Ed25519", {"pub": 1984}),
}  # the rest: jwk() is None

MESSAGE = b"attack at dawn"
AAD = b"key=k1;v=3"


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- generation, loading, public forms ------------------------------------------


def test_every_algorithm_is_covered_by_the_tables() -> None:
    """A new registry entry must be given its expected shapes here."""
    for name in NAMES:
        assert name in STORED_LEN or name.startswith("RSA-"), name
        if name in ASYMMETRIC:
            assert name in PUBLIC_LEN or name.startswith("RSA-"), name


@pytest.mark.parametrize("name", NAMES)
def test_stored_private_form(name, keys) -> None:
    stored = keys.stored(name)
    if name.startswith("RSA-"):
        key = serialization.load_der_private_key(stored, password=None)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == int(name[4:])
    else:
        assert len(stored) == STORED_LEN[name]
    assert keys.stored(name, 1) != stored


@pytest.mark.parametrize("name", NAMES)
def test_load_private_is_deterministic(name, keys) -> None:
    suite = suite_for(name)
    first, second = suite.load_private(keys.stored(name)), suite.load_private(keys.stored(name))
    if first.public() is not None:
        assert first.public().raw() == second.public().raw()


@pytest.mark.parametrize("name", NAMES)
def test_wrong_length_private_key_is_invalid_input(name) -> None:
    with pytest.raises(InvalidInputError):
        suite_for(name).load_private(b"\x01" * 7)


@pytest.mark.parametrize("name", ASYMMETRIC)
def test_public_raw_round_trips(name, keys) -> None:
    public = keys.private(name).public()
    raw = public.raw()
    if name.startswith("RSA-"):
        oid, _, _ = parse_spki(raw)
        assert oid == SPKI_OID[name]
    else:
        assert len(raw) == PUBLIC_LEN[name]
    assert suite_for(name).load_public(raw).raw() == raw


@pytest.mark.parametrize("name", ASYMMETRIC)
def test_wrong_length_public_key_is_invalid_input(name) -> None:
    with pytest.raises(InvalidInputError):
        suite_for(name).load_public(b"\x04" + b"\x01" * 8)


@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric_keys_have_no_public_half(name, keys) -> None:
    assert keys.private(name).public() is None
    with pytest.raises(InvalidInputError):
        suite_for(name).load_public(b"\x00" * 32)


@pytest.mark.parametrize("name", ASYMMETRIC)
def test_pem_is_spki_with_the_registered_oid(name, keys) -> None:
    public = keys.private(name).public()
    pem = public.pem()
    if name not in SPKI_OID:
        assert pem is None
        return
    lines = pem.strip().splitlines()
    assert lines[0] == "-----BEGIN PUBLIC KEY-----" and lines[-1] == "-----END PUBLIC KEY-----"
    der = base64.b64decode("".join(lines[1:-1]))
    oid, _params, bits = parse_spki(der)
    assert oid == SPKI_OID[name]
    if name.startswith("RSA-"):
        assert der == public.raw()
    else:
        assert bits == public.raw()


@pytest.mark.parametrize("name", ASYMMETRIC)
def test_jwk_shape(name, keys) -> None:
    public = keys.private(name).public()
    jwk = public.jwk("kid-1")
    if name not in JWK_SHAPE:
        assert jwk is None
        return
    kty, alg, members = JWK_SHAPE[name]
    assert jwk["kty"] == kty and jwk["alg"] == alg and jwk["kid"] == "kid-1"
    assert set(jwk) == {"kty", "alg", "kid", *members}
    for member, size in members.items():
        if member == "crv":
            assert jwk[member] == size
        else:
            assert "=" not in jwk[member] and len(_b64url_decode(jwk[member])) == size
    if kty == "AKP":
        assert _b64url_decode(jwk["pub"]) == public.raw()


# --- signatures ------------------------------------------------------------------


@pytest.mark.parametrize("name", SIGNERS)
def test_sign_verify(name, keys) -> None:
    key = keys.private(name)
    public = key.public()
    signature = key.sign(MESSAGE)
    if name in SIGNATURE_LEN:
        assert len(signature) == SIGNATURE_LEN[name]
    assert public.verify(MESSAGE, signature)
    assert suite_for(name).load_public(public.raw()).verify(MESSAGE, signature)
    assert not public.verify(MESSAGE + b"!", signature)
    assert not public.verify(MESSAGE, _flip(signature, len(signature) // 2))


@pytest.mark.parametrize("name", SIGNERS)
def test_signature_from_another_key_fails(name, keys) -> None:
    signature = keys.private(name, 1).sign(MESSAGE)
    assert not keys.private(name).public().verify(MESSAGE, signature)


@pytest.mark.parametrize("name", SIGNERS)
@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00", b"\xff" * 5000, b"0\x06\x02\x01\x01\x02\x01\x01"],
    ids=["empty", "one-byte", "oversized", "tiny-der"],
)
def test_malformed_signature_is_false_not_an_error(name, bad, keys) -> None:
    assert keys.private(name).public().verify(MESSAGE, bad) is False


@pytest.mark.parametrize("name", names(Family.SIGNATURE))
def test_signature_keys_refuse_other_operations(name, keys) -> None:
    key = keys.private(name)
    for call in (
        lambda: key.encrypt(MESSAGE, AAD),
        lambda: key.decrypt(MESSAGE, AAD),
        lambda: key.decapsulate(MESSAGE),
        lambda: key.derive(b"info", 32),
        lambda: key.public().encapsulate(),
    ):
        with pytest.raises(UnsupportedOperation):
            call()


# --- encryption -------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCRYPTERS)
def test_encrypt_decrypt(name, keys) -> None:
    key = keys.private(name)
    for plaintext in (b"", MESSAGE, bytes(range(190))):
        ciphertext = key.encrypt(plaintext, AAD)
        assert key.decrypt(ciphertext, AAD) == plaintext
    if key.public() is not None:
        assert key.decrypt(key.public().encrypt(MESSAGE, AAD), AAD) == MESSAGE
    assert key.encrypt(MESSAGE, AAD) != key.encrypt(MESSAGE, AAD)


@pytest.mark.parametrize("name", ENCRYPTERS)
def test_tampered_ciphertext_is_invalid(name, keys) -> None:
    key = keys.private(name)
    ciphertext = key.encrypt(MESSAGE, AAD)
    for index in (0, len(ciphertext) // 2, len(ciphertext) - 1):
        with pytest.raises(InvalidCiphertext):
            key.decrypt(_flip(ciphertext, index), AAD)


@pytest.mark.parametrize("name", ENCRYPTERS)
def test_wrong_aad_is_invalid(name, keys) -> None:
    key = keys.private(name)
    with pytest.raises(InvalidCiphertext):
        key.decrypt(key.encrypt(MESSAGE, AAD), AAD + b"x")


@pytest.mark.parametrize("name", ENCRYPTERS)
@pytest.mark.parametrize("size", [0, 1, 27, 28])
def test_short_or_truncated_ciphertext_is_invalid(name, size, keys) -> None:
    key = keys.private(name)
    with pytest.raises(InvalidCiphertext):
        key.decrypt(b"\x00" * size, AAD)
    with pytest.raises(InvalidCiphertext):
        key.decrypt(key.encrypt(MESSAGE, AAD)[:-1], AAD)


@pytest.mark.parametrize("name", ENCRYPTERS)
def test_ciphertext_for_another_key_is_invalid(name, keys) -> None:
    with pytest.raises(InvalidCiphertext):
        keys.private(name).decrypt(keys.private(name, 1).encrypt(MESSAGE, AAD), AAD)


@pytest.mark.parametrize("name", AEADS)
def test_aead_framing(name, keys) -> None:
    ciphertext = keys.private(name).encrypt(MESSAGE, AAD)
    assert len(ciphertext) == 12 + len(MESSAGE) + 16


@pytest.mark.parametrize("name", names(Family.RSA))
def test_rsa_oaep_plaintext_limit(name, keys) -> None:
    key = keys.private(name)
    limit = int(name[4:]) // 8 - 66
    assert key.decrypt(key.encrypt(b"\x07" * limit, b""), b"") == b"\x07" * limit
    with pytest.raises(InvalidInputError):
        key.encrypt(b"\x07" * (limit + 1), b"")


# --- KEMs -------------------------------------------------------------------------


@pytest.mark.parametrize("name", KEMS)
def test_encapsulate_decapsulate(name, keys) -> None:
    key = keys.private(name)
    ciphertext, shared = key.public().encapsulate()
    assert len(ciphertext) == KEM_CT_LEN[name] and len(shared) == 32
    assert key.decapsulate(ciphertext) == shared
    assert keys.private(name, 1).decapsulate(ciphertext) != shared
    assert key.public().encapsulate() != (ciphertext, shared)


@pytest.mark.parametrize("name", KEMS)
def test_kem_dem_layout(name, keys) -> None:
    ciphertext = keys.private(name).encrypt(MESSAGE, AAD)
    assert len(ciphertext) == KEM_CT_LEN[name] + 12 + len(MESSAGE) + 16


@pytest.mark.parametrize("name", KEMS)
@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_length_kem_ciphertext_is_invalid(name, delta, keys) -> None:
    with pytest.raises(InvalidCiphertext):
        keys.private(name).decapsulate(b"\x00" * (KEM_CT_LEN[name] + delta))


@pytest.mark.parametrize("name", KEMS)
def test_kems_refuse_signing(name, keys) -> None:
    key = keys.private(name)
    with pytest.raises(UnsupportedOperation):
        key.sign(MESSAGE)
    with pytest.raises(UnsupportedOperation):
        key.public().verify(MESSAGE, b"")


# --- KDF --------------------------------------------------------------------------


def test_hkdf_derive(keys) -> None:
    key = keys.private("HKDF-SHA256")
    out = key.derive(b"purpose=a", 42)
    assert len(out) == 42 and out == key.derive(b"purpose=a", 42)
    assert out != key.derive(b"purpose=b", 42)
    assert out != key.derive(b"purpose=a", 42, salt=b"salt")
    assert key.derive(b"purpose=a", 20) == out[:20]
    assert len(key.derive(b"", 8160)) == 8160
    assert keys.private("HKDF-SHA256", 1).derive(b"purpose=a", 42) != out


@pytest.mark.parametrize("length", [0, -1, 8161])
def test_hkdf_length_bounds(length, keys) -> None:
    with pytest.raises(ValueError):
        keys.private("HKDF-SHA256").derive(b"info", length)


@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric_keys_refuse_asymmetric_operations(name, keys) -> None:
    key = keys.private(name)
    with pytest.raises(UnsupportedOperation):
        key.sign(MESSAGE)
    with pytest.raises(UnsupportedOperation):
        key.decapsulate(MESSAGE)
    if name == "HKDF-SHA256":
        with pytest.raises(UnsupportedOperation):
            key.encrypt(MESSAGE, AAD)
    else:
        with pytest.raises(UnsupportedOperation):
            key.derive(b"info", 32)


@pytest.mark.parametrize("name", ["AES-256-GCM", "ChaCha20-Poly1305", "ML-KEM-768", "X-Wing"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=64))
def test_encryption_round_trips_any_bytes(name, plaintext, aad, keys) -> None:
    key = keys.private(name)
    assert key.decrypt(key.encrypt(plaintext, aad), aad) == plaintext

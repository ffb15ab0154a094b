"""Bring your own key: the public key stays the same, and the import is audited."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qkms.crypto.importing import from_pem, from_raw
from qkms.errors import InvalidInputError, UnsupportedAlgorithmError

PEM = serialization.Encoding.PEM
PKCS8 = serialization.PrivateFormat.PKCS8
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def pem_of(key, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(PEM, PKCS8, encryption)


@pytest.mark.parametrize("make,expected", [
    (ed25519.Ed25519PrivateKey.generate, "Ed25519"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ECDSA-P256"),
    (lambda: ec.generate_private_key(ec.SECP256K1()), "ECDSA-secp256k1"),
    (lambda: rsa.generate_private_key(65537, 2048), "RSA-2048"),
])
async def test_imported_keys_keep_their_public_key(svc, make, expected) -> None:
    legacy = make()
    algorithm, private = from_pem(pem_of(legacy, b"pw"), b"pw")
    assert algorithm == expected
    seen = []
    svc.on("auditEvent", seen.append)
    key = await svc.import_key(private=private, usage="SIGNING", algorithm=algorithm,
                               owner="legacy", name="imported")
    assert seen[-1].operation == "IMPORT" and seen[-1].result == "success"
    assert key.public_key_pem.encode() == legacy.public_key().public_bytes(PEM, SPKI)
    sig = (await svc.use_key(key.key_id, "SIGN", b"old world")).signature
    public = legacy.public_key()  # the legacy public key verifies qkms's signature
    if expected.startswith("RSA"):
        public.verify(sig, b"old world", padding.PSS(padding.MGF1(hashes.SHA256()),
                                                     padding.PSS.AUTO), hashes.SHA256())
    elif expected.startswith("ECDSA"):
        public.verify(sig, b"old world", ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(sig, b"old world")


async def test_raw_aes_import_decrypts_with_the_legacy_key(svc) -> None:
    raw = AESGCM.generate_key(256)
    algorithm, private = from_raw(raw, "AES-256-GCM")
    key = await svc.import_key(private=private, usage="ENCRYPTION", algorithm=algorithm,
                               owner="legacy")
    token = await svc.use_key(key.key_id, "ENCRYPT", b"data")
    assert (await svc.use_key(key.key_id, "DECRYPT", token)).plaintext == b"data"


def test_bad_import_material_names_the_field_without_echoing_it() -> None:
    with pytest.raises(InvalidInputError, match="pem: not a readable PEM private key") as info:
        from_pem(b"-----BEGIN PRIVATE KEY-----\nZm9v\n-----END PRIVATE KEY-----\n")
    assert "Zm9v" not in str(info.value)
    with pytest.raises(UnsupportedAlgorithmError, match="curve secp384r1"):
        from_pem(pem_of(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(InvalidInputError, match="raw: must be 32 bytes"):
        from_raw(os.urandom(16), "AES-256-GCM")


def test_secret_data_import_picks_pem_or_raw_and_names_fields() -> None:
    from qkms.crypto.importing import from_secret_data

    pem = pem_of(ed25519.Ed25519PrivateKey.generate())
    assert from_secret_data({"tls.key": pem}, None, None)[0] == "Ed25519"
    raw = os.urandom(32)
    assert from_secret_data({"k": raw, "other": b"x"}, "k", "AES-256-GCM") == ("AES-256-GCM", raw)
    with pytest.raises(InvalidInputError, match="spec.importFrom.key: the Secret has 2 keys"):
        from_secret_data({"a": raw, "b": raw}, None, "AES-256-GCM")
    with pytest.raises(InvalidInputError, match="spec.algorithm: the imported PEM holds"):
        from_secret_data({"k": pem}, None, "ECDSA-P256")
    with pytest.raises(InvalidInputError, match="spec.algorithm: is required"):
        from_secret_data({"k": raw}, None, None)

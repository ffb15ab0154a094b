"""The seed's usage examples, in Python form."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from qkms.model.enums import VersionState


async def test_create_a_signing_key_and_sign(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="user-service",
                               rotation_schedule="P30D")
    assert key.key_id.startswith("key_dev_")
    assert (key.version, key.algorithm, key.state) == (1, "Ed25519", VersionState.ACTIVE)
    assert len(key.public_key) == 32 and "BEGIN PUBLIC KEY" in key.public_key_pem
    result = await svc.use_key(key.key_id, "SIGN", "message to sign",
                               actor={"type": "USER", "id": "user123"})
    assert len(result.signature) == 64 and result.key_id == key.key_id
    # Independent check: the PEM and the raw key both verify it.
    load_pem_public_key(key.public_key_pem.encode()).verify(result.signature, b"message to sign")
    Ed25519PublicKey.from_public_bytes(key.public_key).verify(result.signature,
                                                              b"message to sign")
    assert await svc.use_key(key.name, "VERIFY", "message to sign", signature=result.signature)


async def test_aes_key_encrypts_and_decrypts(svc) -> None:
    key = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM",
                               owner="storage-service")
    assert key.public_key is None and key.public_key_pem is None
    encrypted = await svc.use_key(key.key_id, "ENCRYPT", "sensitive data")
    assert encrypted.ciphertext.startswith(f"qkms:v1:{key.key_id}:")
    decrypted = await svc.use_key(key.key_id, "DECRYPT", encrypted)
    assert decrypted.plaintext == b"sensitive data"
    # The token names its version, so the stable name decrypts it too.
    assert (await svc.use_key(key.name, "DECRYPT", encrypted.ciphertext)).plaintext \
        == b"sensitive data"


async def test_scheduled_rotation_with_grace_period(svc, clock) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="svc")
    old_sig = (await svc.use_key(key.name, "SIGN", b"m")).signature
    rotation = await svc.rotate_key(key.key_id, reason="SCHEDULED", grace_period="P7D",
                                    immediate=False)
    assert rotation.old_key_id == key.key_id and rotation.new_key_id != key.key_id
    active = await svc.get_key(key.name)
    assert active.key_id == rotation.new_key_id and active.version == 2
    assert (await svc.use_key(key.name, "SIGN", b"m")).key_id == rotation.new_key_id
    clock.advance(days=6)
    assert await svc.use_key(key.name, "VERIFY", b"m", signature=old_sig)
    clock.advance(days=2)
    assert not await svc.use_key(key.name, "VERIFY", b"m", signature=old_sig)
    await svc.tick()
    versions = svc.get_record(key.name).versions
    assert [v.state for v in versions] == [VersionState.RETIRED, VersionState.ACTIVE]


async def test_emergency_rotation_revokes_the_old_version(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="svc")
    result = await svc.rotate_key(key.key_id, reason="COMPROMISE", immediate=True)
    assert result.old_state == "REVOKED"
    old = await svc.get_key(key.key_id)
    assert old.state is VersionState.REVOKED


async def test_dilithium3_and_kyber768_keys(svc) -> None:
    pqc = await svc.create_key(usage="SIGNING", algorithm="Dilithium3", owner="secure-service")
    assert pqc.algorithm == "ML-DSA-65" and len(pqc.public_key) == 1952
    sig = (await svc.use_key(pqc.key_id, "SIGN", b"hello")).signature
    assert len(sig) == 3309
    assert await svc.use_key(pqc.key_id, "VERIFY", b"hello", signature=sig)

    kem = await svc.create_key(usage="ENCRYPTION", algorithm="Kyber768", owner="secure-service")
    assert kem.algorithm == "ML-KEM-768" and len(kem.public_key) == 1184
    encap = await svc.use_key(kem.key_id, "ENCAPSULATE")
    decap = await svc.use_key(kem.key_id, "DECAPSULATE", encap.ciphertext)
    assert decap.shared_secret == encap.shared_secret and len(encap.shared_secret) == 32
    token = await svc.use_key(kem.key_id, "ENCRYPT", b"for the quantum age")
    assert (await svc.use_key(kem.key_id, "DECRYPT", token)).plaintext == b"for the quantum age"

"""Each bad input gets a clear error naming the field and the reason."""

from __future__ import annotations

import pytest

from qkms.errors import (
    DecryptionError,
    EnvironmentMismatchError,
    InvalidDurationError,
    InvalidInputError,
    KeyNotFoundError,
    KeyRevokedError,
    KeyStateError,
    OperationNotAllowedError,
    PQCDisabledError,
    UnsupportedAlgorithmError,
)


async def test_unknown_algorithm(svc) -> None:
    with pytest.raises(UnsupportedAlgorithmError, match=r"algorithm: unknown algorithm 'Rot13'"):
        await svc.create_key(usage="SIGNING", algorithm="Rot13", owner="o")
    assert svc.user_records() == []


async def test_malformed_duration(svc) -> None:
    with pytest.raises(InvalidDurationError, match=r"rotation_schedule: 'P3X' is not an ISO 8601"):
        await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o",
                             rotation_schedule="P3X")


async def test_wrong_usage_for_algorithm(svc) -> None:
    with pytest.raises(UnsupportedAlgorithmError,
                       match="AES-256-GCM cannot serve usage SIGNING"):
        await svc.create_key(usage="SIGNING", algorithm="AES-256-GCM", owner="o")
    with pytest.raises(InvalidInputError, match="usage: 'SIGNATURES' is not one of"):
        await svc.create_key(usage="SIGNATURES", algorithm="Ed25519", owner="o")


async def test_operation_not_allowed_for_usage(svc) -> None:
    key = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="o")
    with pytest.raises(OperationNotAllowedError, match="SIGN not allowed for usage ENCRYPTION"):
        await svc.use_key(key.key_id, "SIGN", b"x")
    rsa = await svc.create_key(usage="SIGNING", algorithm="RSA-2048", owner="o")
    with pytest.raises(OperationNotAllowedError, match="ENCRYPT not allowed for usage SIGNING"):
        await svc.use_key(rsa.key_id, "ENCRYPT", b"x")


@pytest.mark.parametrize("owner", ["", "   ", None])
async def test_empty_owner(svc, owner) -> None:
    with pytest.raises(InvalidInputError, match="owner: must not be empty"):
        await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner=owner)


async def test_tampered_ciphertext(svc) -> None:
    key = await svc.create_key(usage="ENCRYPTION", algorithm="ChaCha20-Poly1305", owner="o")
    token = (await svc.use_key(key.key_id, "ENCRYPT", b"secret", context="tenant-a")).ciphertext
    prefix, body = token.rsplit(":", 1)
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(DecryptionError, match="invalid, was tampered with"):
        await svc.use_key(key.key_id, "DECRYPT", f"{prefix}:{flipped}", context="tenant-a")
    with pytest.raises(DecryptionError):  # the context is bound as associated data
        await svc.use_key(key.key_id, "DECRYPT", token, context="tenant-b")
    with pytest.raises(InvalidInputError, match="data: not a qkms ciphertext token"):
        await svc.use_key(key.key_id, "DECRYPT", "garbage")


async def test_signature_from_another_key(svc) -> None:
    a = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    b = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    sig = (await svc.use_key(a.key_id, "SIGN", b"m")).signature
    assert await svc.use_key(b.key_id, "VERIFY", b"m", signature=sig) is False


async def test_decrypt_after_grace_period(svc, clock) -> None:
    key = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="o")
    token = await svc.use_key(key.key_id, "ENCRYPT", b"x")
    await svc.rotate_key(key.key_id, grace_period="P1D")
    assert (await svc.use_key(key.name, "DECRYPT", token)).plaintext == b"x"
    clock.advance(days=1, seconds=1)
    with pytest.raises(KeyStateError, match="grace period of .* ended"):
        await svc.use_key(key.name, "DECRYPT", token)


async def test_use_of_revoked_key(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    await svc.revoke_key(key.key_id, "decommissioned")
    with pytest.raises(KeyRevokedError, match=r"Key revoked: .* \(decommissioned\)"):
        await svc.use_key(key.name, "SIGN", b"m")


async def test_use_from_another_environment(make_service) -> None:
    prod = make_service("prod")
    key = await prod.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    dev = make_service("dev")
    with pytest.raises(EnvironmentMismatchError, match="belongs to environment 'prod'"):
        await dev.use_key(key.key_id, "SIGN", b"m")
    with pytest.raises(EnvironmentMismatchError):
        await dev.use_key(key.name, "SIGN", b"m")


async def test_unknown_key(svc) -> None:
    with pytest.raises(KeyNotFoundError, match="Key not found: key_dev_abc1230000000000"):
        await svc.use_key("key_dev_abc1230000000000", "SIGN", b"m")


async def test_pqc_disabled(make_service) -> None:
    svc = make_service(pqc_enabled=False)
    with pytest.raises(PQCDisabledError, match="PQC is disabled"):
        await svc.create_key(usage="SIGNING", algorithm="Dilithium3", owner="o")
    with pytest.raises(PQCDisabledError):
        await svc.create_key(usage="ENCRYPTION", algorithm="X-Wing", owner="o")


async def test_bad_operation_and_data_types(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    with pytest.raises(InvalidInputError, match="operation: 'EXPLODE' is not one of"):
        await svc.use_key(key.key_id, "EXPLODE", b"m")
    with pytest.raises(InvalidInputError, match="data: must be bytes or str"):
        await svc.use_key(key.key_id, "SIGN", 42)
    with pytest.raises(InvalidInputError, match="signature: is required"):
        await svc.use_key(key.key_id, "VERIFY", b"m")


async def test_refusals_are_audited_as_denied(svc) -> None:
    seen = []
    svc.on("auditEvent", seen.append)
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    await svc.revoke_key(key.key_id, "gone")
    with pytest.raises(KeyRevokedError):
        await svc.use_key(key.key_id, "SIGN", b"m")
    assert [(e.operation, e.result) for e in seen if e.key_name == key.name] == [
        ("CREATE", "success"), ("REVOKE", "success"), ("SIGN", "denied")]
    assert "revoked" in seen[-1].reason

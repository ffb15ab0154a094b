"""AES-GCM versions are rotated before their random nonces run out (issue 14 item 12):
nothing limited the encryptions per version (NIST SP 800-38D: 2^32 with random nonces)."""

from __future__ import annotations

import asyncio

from qkms.config import Settings
from qkms.model.enums import VersionState
from qkms.service import KeyManagementService


async def settle(service: KeyManagementService) -> None:
    for _ in range(100):
        pending = list(getattr(service, "_background", ()))
        if not pending:
            return
        await asyncio.gather(*pending)


async def test_the_encryption_limit_rotates_the_key_as_an_audited_scheduled_rotation(tmp_path):
    service = KeyManagementService(Settings(data_dir=tmp_path / "data", aead_max_encryptions=5))
    seen = []
    service.on("auditEvent", seen.append)
    key = await service.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="o",
                                   name="vault")
    tokens = [await service.use_key("vault", "ENCRYPT", b"m%d" % i) for i in range(5)]
    await settle(service)
    record = service.get_record("vault")
    assert [v.state for v in record.versions] == [VersionState.GRACE, VersionState.ACTIVE]
    (rotation,) = [e for e in seen if e.operation == "ROTATE"]
    assert rotation.reason == "SCHEDULED" and rotation.details["trigger"] == "encryption_limit"
    assert rotation.details["old_key_id"] == key.key_id
    assert (await service.use_key("vault", "DECRYPT", tokens[0])).plaintext == b"m0"
    assert (await service.use_key("vault", "ENCRYPT", b"new")).key_id != key.key_id
    await service.close()


async def test_the_count_survives_a_restart(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", aead_max_encryptions=5)
    first = KeyManagementService(settings)
    key = await first.create_key(usage="ENCRYPTION", algorithm="ChaCha20-Poly1305", owner="o",
                                 name="chacha")
    for _ in range(3):
        await first.use_key("chacha", "ENCRYPT", b"m")
    await first.close()
    second = KeyManagementService(settings)
    for _ in range(2):
        await second.use_key("chacha", "ENCRYPT", b"m")
    await settle(second)
    assert second.get_record("chacha").current.key_id != key.key_id
    await second.close()


def test_the_limit_is_configurable_and_checked() -> None:
    import pytest

    from qkms.errors import InvalidInputError

    assert Settings().aead_max_encryptions < 2**32
    assert Settings.from_env({"QKMS_AEAD_MAX_ENCRYPTIONS": "1000"}).aead_max_encryptions == 1000
    for bad in ("0", "lots", str(2**32 + 1)):
        with pytest.raises(InvalidInputError, match="QKMS_AEAD_MAX_ENCRYPTIONS"):
            Settings.from_env({"QKMS_AEAD_MAX_ENCRYPTIONS": bad})

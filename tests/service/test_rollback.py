"""A key record put back from an older copy is refused, named and audited (issue 14 item 1):
sealed records were bound only to their address, so restoring an old file un-revoked a key
(or brought a retired or revoked version back as ACTIVE) and nothing noticed."""

from __future__ import annotations

import pytest

from qkms.audit.search import Query, search
from qkms.config import Settings
from qkms.errors import KeyRevokedError, QkmsError
from qkms.model.enums import VersionState
from qkms.service import KeyManagementService
from qkms.validate import run_checks


def record_file(service: KeyManagementService, name: str):
    return service.sealed.records.root / "keys" / f"{name.replace('/', '~')}.rec"


async def test_a_rolled_back_record_is_refused_after_a_restart(tmp_path):
    settings = Settings(data_dir=tmp_path / "data").scoped()
    service = KeyManagementService(settings)
    await service.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="o",
                             name="vault")
    token = await service.use_key("vault", "ENCRYPT", b"kept")
    old = record_file(service, "vault").read_bytes()
    await service.revoke_key("vault", "compromised")
    await service.close()
    record_file(service, "vault").write_bytes(old)  # while qkms is stopped

    again = KeyManagementService(settings)
    for operation, data in (("ENCRYPT", b"x"), ("DECRYPT", token)):
        with pytest.raises(QkmsError) as refused:
            await again.use_key("vault", operation, data)
        assert refused.value.code == "record_rollback"
    with pytest.raises(QkmsError, match="rolled back"):  # nor a fresh key over it
        await again.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="o",
                               name="vault")
    health = await again.health_check()
    assert "vault" in health["components"]["store"]["rolled_back_keys"]
    await again.close()
    checks = {c.name: c for c in await run_checks(
        {"QKMS_DATA_DIR": str(tmp_path / "data")})}
    assert "store" in checks, checks
    assert not checks["store"].ok and "rolled back: vault" in checks["store"].detail
    audited = [e for e in search(again.audit.root, Query(operation="RECORD_ROLLBACK"))]
    assert [e["key_name"] for e in audited] == ["vault"]

    # Revoking it again writes a newer generation: the key is revoked, no longer refused.
    healed = KeyManagementService(settings)
    await healed.revoke_key("vault", "compromised, again after the rollback")
    assert healed.catalog.rolled_back == {}
    with pytest.raises(KeyRevokedError):
        await healed.use_key("vault", "ENCRYPT", b"x")
    await healed.close()


async def test_an_older_record_cannot_bring_a_revoked_version_back(tmp_path):
    settings = Settings(data_dir=tmp_path / "data").scoped()
    service = KeyManagementService(settings)
    first = await service.create_key(usage="SIGNING", algorithm="Ed25519", owner="o",
                                     name="signer")
    old = record_file(service, "signer").read_bytes()
    await service.rotate_key("signer", reason="COMPROMISE", immediate=True)
    assert service.get_record("signer").versions[0].state is VersionState.REVOKED
    await service.close()
    record_file(service, "signer").write_bytes(old)
    again = KeyManagementService(settings)
    for ref in ("signer", first.key_id):
        with pytest.raises(QkmsError) as refused:
            await again.use_key(ref, "SIGN", b"m")
        assert refused.value.code == "record_rollback"
    await again.close()


async def test_a_crash_between_entry_and_record_is_not_taken_for_an_attack(tmp_path):
    """The chain is one generation ahead after a crash between the two writes: tolerated for
    a change that only moved the key forward, never for a revocation, and never once a
    checkpoint covers the entry."""
    from qkms.audit.generations import floors

    settings = Settings(data_dir=tmp_path / "data").scoped()
    service = KeyManagementService(settings)
    await service.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="a")
    await service.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="b")
    await service.audit.checkpoint()
    generation = {n: service.get_record(n).revision for n in ("a", "b")}
    await service.rotate_key("a", reason="SCHEDULED")
    await service.revoke_key("b", "lost")
    found = floors(service.audit.root)
    assert found["a"] == generation["a"]  # one behind accepted: unsigned and forward only
    assert found["b"] == generation["b"] + 1  # a revocation: never
    await service.audit.checkpoint()
    assert floors(service.audit.root)["a"] == generation["a"] + 1
    await service.close()

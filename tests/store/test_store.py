"""The embedded store: encrypted at rest, atomic, tamper-evident, KEK rotation."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from qkms.config import Settings
from qkms.errors import KekMismatchError, RecordCorruptError, RecordExistsError
from qkms.service import KeyManagementService
from qkms.store.rewrap import rewrap


async def test_keys_survive_a_restart(make_service) -> None:
    first = make_service()
    key = await first.create_key(usage="SIGNING", algorithm="ML-DSA-44", owner="o")
    second = make_service()
    sig = (await second.use_key(key.name, "SIGN", b"m")).signature
    assert await first.use_key(key.key_id, "VERIFY", b"m", signature=sig)


async def test_master_key_is_created_private(svc, tmp_path) -> None:
    mode = stat.S_IMODE(os.stat(svc.settings.kek_path).st_mode)
    assert mode == 0o600


async def test_nothing_is_stored_in_the_clear(svc, tmp_path) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="visible-owner")
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "data" / "store").rglob("*.rec"))
    assert b"visible-owner" not in blobs and key.key_id.encode() not in blobs
    assert key.public_key not in blobs


async def test_swapped_and_flipped_records_are_detected_and_named(make_service, tmp_path) -> None:
    svc = make_service()
    a = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="alpha")
    b = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="beta")
    c = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="gamma")
    keys = tmp_path / "data" / "store" / "keys"
    (keys / "alpha.rec").write_bytes((keys / "beta.rec").read_bytes())  # swap
    blob = bytearray((keys / "gamma.rec").read_bytes())
    blob[40] ^= 1  # flip a bit
    (keys / "gamma.rec").write_bytes(bytes(blob))
    fresh = make_service()
    assert set(fresh.catalog.corrupt) == {"keys/alpha", "keys/gamma"}
    health = await fresh.health_check()
    assert health["status"] == "degraded"
    assert health["components"]["store"]["corrupt_records"] == ["keys/alpha", "keys/gamma"]
    assert await fresh.use_key(b.name, "SIGN", b"still works")
    # The material record of a swapped key is also bound to its key ID.
    material = tmp_path / "data" / "store" / "material"
    (material / f"{a.key_id}.rec").write_bytes((material / f"{c.key_id}.rec").read_bytes())
    with pytest.raises(RecordCorruptError, match=f"material/{a.key_id}"):
        fresh.sealed.get("material", a.key_id)


async def test_truncated_record_is_detected(make_service, tmp_path) -> None:
    svc = make_service()
    await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="alpha")
    path = tmp_path / "data" / "store" / "keys" / "alpha.rec"
    path.write_bytes(path.read_bytes()[:20])
    assert "keys/alpha" in make_service().catalog.corrupt


async def test_rewrap_reseals_everything_under_a_new_kek(make_service, tmp_path) -> None:
    svc = make_service()
    key = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="o")
    token = await svc.use_key(key.key_id, "ENCRYPT", b"kept")
    old_kek = svc.settings.kek_path.read_bytes()
    records = sum(len(svc.sealed.list(kind)) for kind in ("keys", "material", "audit",
                                                          "usage"))
    count = rewrap(svc.settings)
    assert count == records == 6  # catalog and material, for the key and the audit key,
    # the audit MAC keys, and the AES key's encryption count
    assert svc.settings.kek_path.read_bytes() != old_kek
    assert not svc.settings.kek_path.with_suffix(".old").exists()
    after = make_service()
    assert (await after.use_key(key.name, "DECRYPT", token)).plaintext == b"kept"


async def test_wrong_master_key_is_reported(tmp_path) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    svc = KeyManagementService(settings)
    await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="alpha")
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    with pytest.raises(KekMismatchError) as refused:  # a wrong KEK, not tampering
        KeyManagementService(Settings(data_dir=data, master_key_file=other))
    assert f"was sealed under KEK {svc.sealed.sealer.kek_id}, found at {data / 'master.key'}" \
        in refused.value.message and f"this command used {other}" in refused.value.message
    gone = tmp_path / "gone.key"  # no KEK there: refused, and none is created beside records
    with pytest.raises(KekMismatchError, match="will not create a new master key"):
        KeyManagementService(Settings(data_dir=data, master_key_file=gone))
    assert not gone.exists()


async def test_two_writers_making_one_name_never_overwrite_each_other(make_service) -> None:
    """Two services on one store (two replicas; a service rebuilt while the old one is
    still making a key) both decide a name is free: the second record write is refused,
    its provider copy removed, and the first key stays the one every reader sees."""
    first, second = make_service(), make_service()
    made = await first.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="dup")
    with pytest.raises(RecordExistsError, match="keys/dup"):
        await second.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="dup")
    assert make_service().catalog.get("dup").versions[0].key_id == made.key_id


async def test_the_audit_checkpoint_key_is_made_once_by_racing_services(make_service) -> None:
    """Two services that both found no checkpoint key agree on one (the one written
    first): a second would replace the pinned key under the verifiers' feet."""
    first, second = make_service(), make_service()
    await asyncio.gather(
        first.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="one"),
        second.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="two"))
    assert first.audit_public_key() == second.audit_public_key() is not None
    assert make_service().audit_public_key() == first.audit_public_key()

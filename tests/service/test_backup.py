"""Back up, wipe, restore: old signatures verify, old ciphertexts decrypt, versions and
states are intact; a corrupted or wrong-key backup is refused."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from qkms import backup
from qkms.errors import IntegrityError, InvalidInputError


async def populated(svc):
    signer = await svc.create_key(usage="SIGNING", algorithm="ML-DSA-65", owner="o", name="s")
    old_sig = (await svc.use_key("s", "SIGN", b"m")).signature
    await svc.rotate_key("s", grace_period="P1D")
    await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="o", name="a")
    token = await svc.use_key("a", "ENCRYPT", b"kept")
    await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="r")
    await svc.revoke_key("r", "done")
    return signer, old_sig, token


async def test_backup_wipe_restore(make_service, tmp_path) -> None:
    svc = make_service()
    _, old_sig, token = await populated(svc)
    states = {r.name: [v.state for v in r.versions] for r in svc.catalog.all()}
    key = os.urandom(32)
    document = json.loads(json.dumps(backup.create(svc, key)))
    assert b"kept" not in json.dumps(document).encode()
    shutil.rmtree(tmp_path / "data")  # the disaster: store and master key gone
    fresh = make_service()
    assert await backup.restore(fresh, document, key) == 4  # three keys and the audit key
    assert {r.name: [v.state for v in r.versions] for r in fresh.catalog.all()} == states
    assert await fresh.use_key("s", "VERIFY", b"m", signature=old_sig)
    assert (await fresh.use_key("a", "DECRYPT", token)).plaintext == b"kept"
    with pytest.raises(InvalidInputError, match="empty store"):
        await backup.restore(fresh, document, key)


async def test_corrupt_or_wrong_key_backups_are_refused(make_service) -> None:
    svc = make_service()
    await populated(svc)
    key = os.urandom(32)
    document = backup.create(svc, key)
    with pytest.raises(IntegrityError, match="backup key"):
        backup.open_backup(document, os.urandom(32))
    tampered = dict(document)
    body = bytearray(tampered["ciphertext"].encode())
    body[10] = ord("A") if body[10] != ord("A") else ord("B")
    tampered["ciphertext"] = body.decode()
    with pytest.raises(IntegrityError, match="tampered"):
        backup.open_backup(tampered, key)
    edited = dict(document, keys=99)
    with pytest.raises(IntegrityError, match="tampered"):
        backup.open_backup(edited, key)
    with pytest.raises(InvalidInputError, match="backup: not a qkms-backup/1 file"):
        backup.open_backup({"format": "zip"}, key)


async def test_scheduled_backups_prune_past_retention(make_service, tmp_path, clock) -> None:
    from datetime import timedelta

    svc = make_service()
    await populated(svc)
    folder, key = tmp_path / "backups", os.urandom(32)
    first, pruned = await backup.scheduled(svc, folder, key, "P7D")
    assert pruned == [] and first.stat().st_mode & 0o077 == 0
    clock.advance(days=8)
    second, pruned = await backup.scheduled(svc, folder, key, "P7D")
    assert pruned == [first.name] and sorted(p.name for p in folder.iterdir()) == [second.name]
    assert backup.open_backup(json.loads(second.read_text()), key)[0]["keys"] == 4
    assert backup.expired_backups(["unrelated.txt", "qkms-dev-garbage.json"], "dev",
                                  clock() + timedelta(days=99), "P7D") == []

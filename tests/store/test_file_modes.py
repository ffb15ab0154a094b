"""Master key permissions are checked on use; the store and the audit log are private
(issue 14 item 7)."""

from __future__ import annotations

import stat

import pytest

from qkms.config import Settings
from qkms.errors import InvalidInputError
from qkms.service import KeyManagementService


async def test_a_kek_readable_by_others_is_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("QKMS_ALLOW_INSECURE_KEK", raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    first = KeyManagementService(settings)
    await first.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="k")
    await first.close()
    settings.kek_path.chmod(0o666)
    with pytest.raises(InvalidInputError) as refused:
        KeyManagementService(settings)
    assert refused.value.field == "QKMS_MASTER_KEY_FILE"
    assert "readable by group or others (mode 666)" in refused.value.reason
    assert "chmod 600" in refused.value.reason
    monkeypatch.setenv("QKMS_ALLOW_INSECURE_KEK", "1")
    service = KeyManagementService(settings)  # an explicit override: used, with a warning
    assert (await service.get_key("k")).name == "k"
    await service.close()


async def test_store_and_audit_files_are_0600_in_0700_folders(tmp_path, monkeypatch):
    import os

    os_umask = os.umask(0o022)  # the usual one: files and folders must not follow it
    try:
        service = KeyManagementService(Settings(data_dir=tmp_path / "data" / "dev"))
        key = await service.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="o")
        await service.use_key(key.key_id, "ENCRYPT", b"x")
        await service.close()
    finally:
        os.umask(os_umask)
    loose = []
    for path in (tmp_path / "data").rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if (path.is_dir() and mode != 0o700) or (path.is_file() and mode != 0o600):
            loose.append(f"{path.relative_to(tmp_path)} {mode:o}")
    assert not loose, loose

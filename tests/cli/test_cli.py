"""The qkms command: files or stdin/stdout, base64 or raw, errors on stderr."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def qkms(tmp_path):
    env = {**os.environ, "QKMS_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(ROOT / "operator")}

    def run(*args: str, stdin: bytes = b"", check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "qkms", *args], input=stdin, env=env,
                              capture_output=True, cwd=tmp_path, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(proc.stderr.decode())
        return proc
    return run


def test_create_sign_verify_rotate_revoke(qkms, tmp_path) -> None:
    created = json.loads(qkms("keys", "create", "--usage", "SIGNING", "--algorithm",
                              "Ed25519", "--owner", "team-a", "--name", "signer").stdout)
    assert created["name"] == "signer" and created["version"] == 1
    sig = qkms("keys", "sign", "signer", stdin=b"payload").stdout
    assert len(base64.b64decode(sig)) == 64
    (tmp_path / "sig").write_bytes(sig)
    assert qkms("keys", "verify", "signer", "--signature", "sig",
                stdin=b"payload").stdout.strip() == b"valid"
    bad = qkms("keys", "verify", "signer", "--signature", "sig", stdin=b"other", check=False)
    assert bad.returncode == 1 and bad.stdout.strip() == b"invalid"
    rotated = json.loads(qkms("keys", "rotate", "signer", "--reason", "COMPROMISE").stdout)
    assert rotated["old_state"] == "REVOKED"
    listed = json.loads(qkms("keys", "list").stdout)
    assert listed[0]["key_id"] == rotated["new_key_id"]
    qkms("keys", "revoke", "signer", "--reason", "done")
    refused = qkms("keys", "sign", "signer", stdin=b"x", check=False)
    assert refused.returncode == 1 and b"Key revoked" in refused.stderr


def test_encrypt_decrypt_with_files_and_raw_output(qkms, tmp_path) -> None:
    qkms("keys", "create", "--usage", "ENCRYPTION", "--algorithm", "AES-256-GCM",
         "--owner", "o", "--name", "vault")
    (tmp_path / "plain.bin").write_bytes(b"\x00\x01secret")
    qkms("keys", "encrypt", "vault", "--in", "plain.bin", "--out", "token.txt",
         "--context", "t1")
    qkms("keys", "decrypt", "vault", "--in", "token.txt", "--out", "back.bin",
         "--encoding", "raw", "--context", "t1")
    assert (tmp_path / "back.bin").read_bytes() == b"\x00\x01secret"


def test_public_export_and_kem(qkms, tmp_path) -> None:
    qkms("keys", "create", "--usage", "ENCRYPTION", "--algorithm", "Kyber768", "--owner", "o",
         "--name", "kem")
    pem = qkms("keys", "public", "kem", "--format", "pem").stdout
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    qkms("keys", "encapsulate", "kem", "--out", "ct", "--secret-out", "ss")
    out = qkms("keys", "decapsulate", "kem", "--in", "ct").stdout
    assert out.strip() == (tmp_path / "ss").read_bytes().strip()


def test_errors_go_to_stderr_with_the_field(qkms) -> None:
    proc = qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "Nope", "--owner", "o",
                check=False)
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.splitlines()[-1].startswith(
        b"qkms: error: algorithm: unknown algorithm 'Nope'")
    proc = qkms("keys", "show", "key_dev_0000000000000000", check=False)
    assert proc.returncode == 1 and b"Key not found: key_dev_0000000000000000" in proc.stderr


def test_rewrap_and_version(qkms) -> None:
    qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "Ed25519", "--owner", "o",
         "--name", "k")
    # catalog and material records of the key and of the audit checkpoint key
    assert json.loads(qkms("keys", "rewrap").stdout)["rewrapped"] == 4
    assert qkms("keys", "sign", "k", stdin=b"x").returncode == 0
    assert qkms("version").stdout.startswith(b"qkms ")


def test_demo_runs_the_seed_examples(qkms) -> None:
    out = qkms("demo").stdout.decode()
    assert "health: healthy" in out and "shared secrets match: True" in out


def plant_intent(data_dir: Path) -> None:
    """An intent a killed process left open an hour ago (store/intents.py)."""
    from datetime import UTC, datetime, timedelta

    from qkms.config import Settings
    from qkms.store.intents import Intent, IntentLog
    from qkms.store.kek import Sealer, load_or_create_kek
    from qkms.store.records import FileRecordStore
    from qkms.store.sealed import SealedStore

    settings = Settings(data_dir=data_dir).scoped()
    sealed = SealedStore(FileRecordStore(settings.data_dir / "store"),
                         Sealer(load_or_create_kek(settings.kek_path)))
    IntentLog(sealed).open(Intent("key_dev_00000000000000aa", "team/half-made", "CREATE",
                                  "Ed25519", datetime.now(UTC) - timedelta(hours=1), "gone"))


def test_validate_reports_each_check_and_fails_on_any(qkms, tmp_path) -> None:
    empty = qkms("validate", check=False)  # an empty folder: what to run first
    assert empty.returncode == 1
    assert empty.stdout.splitlines()[0].startswith(
        b"FAIL store: no store here yet") and b"run `qkms serve` or `qkms keys create`" \
        in empty.stdout.splitlines()[0]
    qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "Ed25519", "--owner", "o")
    ok = qkms("validate", "--manifests", str(ROOT / "examples"))
    lines = ok.stdout.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ok   configuration", "ok   manifests", "ok   master key", "ok   store",
        "ok   intents", "ok   provider", "ok   audit"]
    plant_intent(tmp_path / "data")
    stale = qkms("validate", check=False)
    assert stale.returncode == 1
    assert b"FAIL intents: unresolved" in stale.stdout and b"CREATE team/half-made" in stale.stdout
    (tmp_path / "data" / "master.key").chmod(0o644)
    loose = qkms("validate", check=False)
    assert loose.returncode == 1 and b"readable by others" in loose.stdout


def test_backup_create_and_restore_commands(qkms, tmp_path) -> None:
    qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "Ed25519", "--owner", "o",
         "--name", "k")
    sig = qkms("keys", "sign", "k", stdin=b"m").stdout
    qkms("backup", "create", "--out", "b.json", "--backup-key-file", "bk")
    import shutil

    shutil.rmtree(tmp_path / "data")
    assert b'"restored": 2' in qkms("backup", "restore", "--in", "b.json",
                                    "--backup-key-file", "bk").stdout
    (tmp_path / "sig").write_bytes(sig)
    assert qkms("keys", "verify", "k", "--signature", "sig", stdin=b"m").stdout.strip() \
        == b"valid"

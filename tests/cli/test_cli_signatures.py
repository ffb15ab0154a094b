"""qkms keys sign/verify/public with the ECDSA options: --format, --prehashed,
--recovery-id, --low-s, and the Ethereum address of a secp256k1 key."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import coincurve
import pytest
from eth_hash.auto import keccak
from eth_keys import keys as eth_keys

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


def test_ethereum_signing_from_the_command_line(qkms, tmp_path) -> None:
    qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "ECDSA-secp256k1",
         "--owner", "eth", "--name", "wallet")
    address = qkms("keys", "public", "wallet", "--format", "ethereum").stdout.decode().strip()
    raw_public = base64.b64decode(qkms("keys", "public", "wallet", "--format", "raw").stdout)
    assert address == eth_keys.PublicKey(raw_public[1:]).to_checksum_address()

    digest = keccak(b"an rlp-encoded transaction")
    proc = qkms("keys", "sign", "wallet", "--prehashed", "--recovery-id", "--encoding", "raw",
                stdin=digest)
    rsv = proc.stdout
    assert len(rsv) == 65 and rsv[64] in (0, 1) and b"recovery id" in proc.stderr
    recovered = eth_keys.Signature(rsv).recover_public_key_from_msg_hash(digest)
    assert recovered.to_checksum_address() == address

    (tmp_path / "sig").write_bytes(base64.b64encode(rsv[:64]))
    (tmp_path / "digest").write_bytes(digest)
    assert qkms("keys", "verify", "wallet", "--in", "digest", "--prehashed", "--signature",
                "sig").stdout.strip() == b"valid"
    raw = base64.b64decode(qkms("keys", "sign", "wallet", "--format", "raw",
                                stdin=b"hello").stdout)
    assert len(raw) == 64
    assert coincurve.PublicKey(raw_public).verify(
        base64.b64decode(qkms("keys", "sign", "wallet", stdin=b"hello").stdout), b"hello")


def test_refusals_name_the_flag(qkms) -> None:
    qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "Ed25519", "--owner", "o",
         "--name", "ed")
    qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "ECDSA-P256", "--owner", "o",
         "--name", "p256")
    for args, stdin, needle in (
        (("keys", "public", "ed", "--format", "ethereum"), b"", b"--format: only ECDSA-secp256k1"),
        (("keys", "sign", "ed", "--prehashed"), bytes(32), b"prehashed: Ed25519 signs"),
        (("keys", "sign", "ed", "--format", "raw"), b"m", b"signature_format: Ed25519"),
        (("keys", "sign", "p256", "--recovery-id"), b"m", b"recovery_id: only ECDSA-secp256k1"),
        (("keys", "sign", "p256", "--recovery-id", "--format", "der"), b"m", b"--format:"),
        (("keys", "sign", "p256", "--prehashed"), b"short", b"32-byte digest, got 5"),
    ):
        proc = qkms(*args, stdin=stdin, check=False)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)
    raw = base64.b64decode(qkms("keys", "sign", "p256", "--low-s", "--format", "raw",
                                stdin=b"m").stdout)
    assert len(raw) == 64
    assert json.loads(qkms("keys", "public", "p256", "--format", "jwks").stdout)["keys"]

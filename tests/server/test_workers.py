"""Data-plane worker processes (``QKMS_DATA_PLANE_WORKERS``): ``qkms serve`` runs N workers
on one port (SO_REUSEPORT), each with its own audit chain; a rotation or revocation made
by any process over the data dir is honoured by every worker at once (the store's change
feed, not the catalog TTL); ``qkms audit verify``, ``export`` and ``search`` read every
worker's chain."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from qkms.audit.store import iter_log
from qkms.config import Settings
from qkms.server.workers import writer_name
from qkms.service import KeyManagementService
from tests.server.conftest import free_port
from tests.server.serve_process import serve_env, sign, start, stop, write_tokens

TOKEN = "tok-workers"  # noqa: S105 - a test token for a loopback server


def test_each_worker_writes_its_own_chain() -> None:
    # how many workers (QKMS_DATA_PLANE_WORKERS): tests/test_config.py (ServeConfig)
    assert writer_name("", 1) == "w1" and writer_name("qkms-0", 2) == "qkms-0-w2"


def _sign(port: int) -> tuple[int, dict]:
    status, body = sign(port, TOKEN)
    return status, json.loads(body)


def _entries(folder: Path) -> int:
    return sum(1 for _ in iter_log(folder))


@pytest.fixture
def served(tmp_path):
    """``qkms serve`` with two data-plane workers and a catalog TTL of a minute: only the
    change feed can explain a change seen at once."""
    tokens = write_tokens(tmp_path, TOKEN, ["sign", "verify"])
    port = free_port()
    env = serve_env(tmp_path, QKMS_DATA_PLANE_WORKERS="2", QKMS_CATALOG_TTL_SECONDS="60")
    proc, lines = start(tmp_path, port, tokens, env)
    assert lines and "(2 worker processes)" in lines[-1], "".join(lines)
    try:
        yield port
    finally:
        code, err = stop(proc)
        assert code == 0, err
        assert "Traceback" not in err and TOKEN not in err, err


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkms", *args], cwd=tmp_path,
                          env=serve_env(tmp_path, QKMS_AUDIT_WRITER="cli"),
                          capture_output=True, text=True, timeout=120, check=False)


def test_workers_share_the_port_and_see_a_revocation_at_once(served, tmp_path) -> None:
    audit = tmp_path / "data" / "dev" / "audit"
    for _ in range(60):  # until the kernel has given connections to both workers
        status, body = _sign(served)
        assert status == 200, body
        if all((audit / w / "segments").is_dir() and _entries(audit / w) > 0
               for w in ("w1", "w2")):
            break
    first = {w: _entries(audit / w) for w in ("w1", "w2")}
    assert all(first.values()), first  # two processes answered on one port

    revoked = _cli(tmp_path, "keys", "revoke", "payments/user-service-signing",
                   "--reason", "test")
    assert revoked.returncode == 0, revoked.stderr
    answers = [_sign(served) for _ in range(40)]  # at once: no sleep, TTL 60 s
    assert {status for status, _ in answers} == {409}, answers[:3]
    after = {w: _entries(audit / w) for w in ("w1", "w2")}
    assert all(after[w] > first[w] for w in after), (first, after)  # both refused it


def test_audit_verify_export_and_search_read_every_workers_chain(served, tmp_path) -> None:
    for _ in range(40):
        assert _sign(served)[0] == 200
    audit = tmp_path / "data" / "dev" / "audit"
    assert {p.name for p in audit.iterdir() if (p / "segments").is_dir()} == {"w1", "w2"}

    verified = _cli(tmp_path, "audit", "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    chains = {Path(c["folder"]).name: c for c in report["chains"]}
    assert set(chains) == {"w1", "w2"} and all(c["ok"] for c in chains.values())
    signs = sum(c["entries"] for c in chains.values())
    assert signs >= 40

    found = _cli(tmp_path, "audit", "search", "--operation", "SIGN")
    assert found.returncode == 0, found.stderr
    assert len(found.stdout.splitlines()) == 40  # the 40 signs, whichever worker served them

    exported = _cli(tmp_path, "audit", "export", "--car", str(tmp_path / "log.car"))
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in tmp_path.glob("log*.car")) == ["log.car", "log.w1.car",
                                                                  "log.w2.car"]

    # one byte changed in a worker's chain: verify fails and names that chain
    segment = sorted((audit / "w2" / "segments").iterdir())[-1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    tampered = _cli(tmp_path, "audit", "verify")
    assert tampered.returncode == 1 and "chain w2" in tampered.stdout, tampered.stdout


async def test_a_rotation_through_one_worker_is_used_by_another_at_once(tmp_path) -> None:
    """Two services over one data dir, as two workers are: a rotation (and then a
    revocation) through one is what the other uses on its next call, TTL or not."""
    settings = Settings(data_dir=tmp_path / "data", catalog_ttl=3600.0)
    one = KeyManagementService(replace(settings, audit_writer="w1"))
    two = KeyManagementService(replace(settings, audit_writer="w2"))
    try:
        created = await one.create_key(usage="SIGNING", algorithm="Ed25519",
                                       owner="payments", name="payments/signing")
        signed = await two.use_key("payments/signing", "SIGN", b"m")  # new to two: found
        assert signed.key_id == created.key_id
        rotated = await one.rotate_key("payments/signing", reason="SCHEDULED")
        assert (await two.use_key("payments/signing", "SIGN", b"m")).key_id == \
            rotated.new_key_id
        await two.revoke_key("payments/signing", "test")
        with pytest.raises(Exception, match="revoked|REVOKED"):
            await one.use_key("payments/signing", "SIGN", b"m")
    finally:
        await one.close()
        await two.close()

"""``kill -9`` during heavy append: after restart the chain verifies and holds every
entry that was acknowledged (the child prints each acknowledgement, flushed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qkms.audit.chain import AuditChain
from qkms.audit.encoding import cid_str
from qkms.audit.verify import verify_folder
from qkms.crypto import verify_signature
from tests.audit.helpers import AuditKey, make_entry

ROOT = Path(__file__).resolve().parents[2]


def run_and_kill(folder: Path, sync: str, acks: int) -> dict[int, str]:
    key_file = folder.parent / "audit.key"
    key_file.write_bytes(AuditKey().private)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)])}
    child = subprocess.Popen([sys.executable, str(ROOT / "tests/audit/crash_child.py"),
                              str(folder), sync, str(key_file)], stdout=subprocess.PIPE,
                             text=True, env=env, cwd=ROOT)
    acknowledged: dict[int, str] = {}
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while len(acknowledged) < acks and time.monotonic() < deadline:
            seq, cid = child.stdout.readline().split()
            acknowledged[int(seq)] = cid
        os.kill(child.pid, signal.SIGKILL)  # in the middle of appending
        for line in child.stdout:  # acknowledgements already in the pipe count too
            if len(line.split()) == 2:
                seq, cid = line.split()
                acknowledged[int(seq)] = cid
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= acks
    return acknowledged


@pytest.mark.parametrize("sync", ["fsync", "write"])
async def test_kill_9_loses_no_acknowledged_entry(tmp_path, sync):
    acknowledged: dict[int, str] = {}
    folder = tmp_path / "audit"
    for _ in range(2):  # kill, restart from what is on disk, kill again
        acknowledged.update(run_and_kill(folder, sync, acks=1500))
        stored: dict[int, str] = {}
        result = verify_folder(folder, check=verify_signature,
                               on_entry=lambda s, c, _: stored.__setitem__(s, cid_str(c)))
        assert result.ok, result.finding
        missing = {s: c for s, c in acknowledged.items() if stored.get(s) != c}
        assert not missing, f"{len(missing)} acknowledged entries lost, first {min(missing)}"
        async with AuditChain(folder) as chain:  # restart: resumes after the last entry
            assert chain.size == result.last_seq
            assert (await chain.append(make_entry(0))).sequence == result.last_seq + 1
    assert verify_folder(folder, check=verify_signature).ok

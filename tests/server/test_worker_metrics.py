"""``/metrics/keys`` of ``qkms serve`` with data-plane workers: every scrape, whichever
worker answers, counts the reconciler's and every worker's audited operations, also
after a worker was killed and started again (its counts stay, as its chain does; only
its live gauges go); the multiprocess folder is removed when serve stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.server.conftest import free_port
from tests.server.serve_process import request, serve_env, sign, start, stop, write_tokens

TOKEN = "tok-metrics"  # noqa: S105 - a test token for a loopback server


def _sign(port: int) -> int:
    return sign(port, TOKEN)[0]


def _scrape(port: int) -> tuple[float, Counter[str]]:
    status, body = request(port, TOKEN, "GET", "/metrics/keys")
    assert status == 200, body
    total, by_operation = 0.0, Counter[str]()
    for line in body.decode().splitlines():
        if line.startswith("qkms_audit_events_total "):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("qkms_keys_created_total{"):
            by_operation["CREATE"] += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("qkms_operations_total{") and 'operation="SIGN"' in line:
            by_operation["SIGN"] += int(float(line.rsplit(" ", 1)[1]))
    return total, by_operation


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _chain(tmp_path: Path, env: dict[str, str]) -> list[dict]:
    found = subprocess.run([sys.executable, "-m", "qkms", "audit", "search"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in found.stdout.splitlines()]


def test_scrapes_count_every_process_after_a_worker_is_killed(tmp_path) -> None:
    tokens = write_tokens(tmp_path, TOKEN, ["sign", "metrics"])
    (tmp_path / "tmp").mkdir()
    port = free_port()
    env = serve_env(tmp_path, QKMS_DATA_PLANE_WORKERS="2", TMPDIR=str(tmp_path / "tmp"))
    proc, _ = start(tmp_path, port, tokens, env)
    audit = tmp_path / "data" / "dev" / "audit"
    try:
        folder = [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("qkms-metrics-")]
        assert len(folder) == 1, folder  # the multiprocess folder serve made
        for _ in range(60):
            assert _sign(port) == 200
            if all(any((audit / w / "segments").glob("*.qlog")) for w in ("w1", "w2")):
                break
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_children(proc.pid) - {killed}) < 2:
            time.sleep(0.1)
        assert len(_children(proc.pid) - {killed}) == 2, "the killed worker was not restarted"
        signs = 0
        for _ in range(10):
            status = _sign(port)
            signs += status == 200
        chain = _chain(tmp_path, env)
        wanted = Counter(e["operation"] for e in chain
                         if e["result"] == "success" and e["operation"] in ("CREATE", "SIGN"))
        deadline = time.monotonic() + 20  # deliveries follow each writer's group commit
        while _scrape(port)[0] != len(chain) and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(8):
            total, by_operation = _scrape(port)
            assert total == len(chain), (total, len(chain))
            assert by_operation == wanted, (by_operation, wanted)
        assert signs >= 9  # a connection may meet the killed worker's last moments
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err, err
    assert list((tmp_path / "tmp").iterdir()) == []  # the multiprocess folder is gone

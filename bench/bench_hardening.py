"""Issue 14's figures, items 4 and 5, on a real ``qkms serve``: ``python -m bench.run hardening``.

Item 4 (denials): 1,000 no-token sign requests with 7,000-character key names from one
source, then the server is stopped (so aggregated denials are flushed) and the bytes the
audit folder grew by are divided by 1,000.  The reference, in the same run and data
folder: 1,000 allowed, audited Ed25519 signs, measured the same way (start, requests,
stop).  Printed: bytes per denial, bytes per allowed sign, and their ratio.

Item 5 (batches): the key cache is short (``QKMS_KEY_CACHE_SECONDS=1``) and has expired
when one authorized caller sends a 1,000-item RSA-2048 sign batch; meanwhile a probe asks
``/health/keys`` (and ``/healthz``, where the tree has it) every 20 ms.  The reference:
the same probes while the server is idle, moments before.  Printed: worst and median probe
latency idle and during the batch, and the ratio of the worst ones.

``QKMS_BENCH_PYTHONPATH`` runs the server from another tree's code (a ``git worktree`` of
an older commit: ``QKMS_BENCH_PYTHONPATH=/tmp/wt/operator``); the client side stays this
tree's.  Endpoints the older tree lacks are skipped and named in the output.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from tests.support.server_process import free_port, http_status

ROOT = Path(__file__).resolve().parents[1]
SERVER_PATH = os.environ.get("QKMS_BENCH_PYTHONPATH") or str(ROOT / "operator")
REQUESTS = 1000
NAME = "k" * 7000
PROBE_EVERY = 0.02

MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: payments, labels: {qkms.io/environment: dev}}
---
apiVersion: qkms.io/v1alpha1
kind: KeyPolicy
metadata: {name: dev}
spec: {environment: dev, provider: {type: LOCAL_DEV}}
---
apiVersion: qkms.io/v1alpha1
kind: ManagedKey
metadata: {name: bench-ed25519, namespace: payments}
spec: {usage: SIGNING, algorithm: Ed25519, owner: bench}
---
apiVersion: qkms.io/v1alpha1
kind: ManagedKey
metadata: {name: bench-rsa, namespace: payments}
spec: {usage: SIGNING, algorithm: RSA-2048, owner: bench}
"""


class Server:
    """One ``qkms serve`` over a folder that outlives it (so it can be restarted)."""

    def __init__(self, tmp: Path, token: str) -> None:
        self.tmp, self.token = tmp, token
        (tmp / "manifests").mkdir(parents=True, exist_ok=True)
        (tmp / "manifests" / "bench.yaml").write_text(MANIFESTS)
        tokens = tmp / "tokens.yaml"
        tokens.write_text(yaml.safe_dump({
            "tokens": [{"serviceAccount": "payments/bench", "token": token}],
            "grants": [{"serviceAccount": "payments/bench", "namespace": "payments",
                        "verbs": ["sign"]}]}))
        tokens.chmod(0o600)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = (self.tmp / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qkms", "serve", "--manifests", str(self.tmp / "manifests"),
             "--listen", f"127.0.0.1:{port}", "--tokens", str(self.tmp / "tokens.yaml")],
            env={**os.environ, "PYTHONPATH": SERVER_PATH, "QKMS_DATA_DIR": str(self.tmp / "data"),
                 "QKMS_DATA_PLANE_WORKERS": "1", "QKMS_KEY_CACHE_SECONDS": "1"},
            cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qkms serve exited {self.proc.returncode}: see "
                                   f"{self.tmp / 'serve.log'}")
            if http_status(self.url + "/health/keys") == 200:
                return
            time.sleep(0.2)
        raise RuntimeError("qkms serve did not come up")

    def stop(self) -> None:
        """SIGTERM and wait: a graceful stop writes what is pending (aggregated denials)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def audit_bytes(self) -> int:
        data = self.tmp / "data"
        return sum(p.stat().st_size for folder in data.rglob("audit*") if folder.is_dir()
                   for p in folder.rglob("*") if p.is_file())

    def sign_url(self, name: str) -> str:
        return f"{self.url}/v1/keys/payments/{name}:sign"


async def post(session: aiohttp.ClientSession, url: str, body: dict,
               token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(url, json=body, headers=headers) as rsp:
        return rsp.status, await rsp.json(content_type=None)


async def requests(server: Server, name: str, token: str | None, expect: int) -> None:
    payload = {"input": base64.b64encode(b"bench").decode()}
    async with aiohttp.ClientSession() as session:  # one client, one source address
        for _ in range(REQUESTS):
            status, body = await post(session, server.sign_url(name), payload, token)
            if status != expect:
                raise RuntimeError(f"expected {expect}, got {status}: {str(body)[:200]}")


async def audit_growth(server: Server, name: str, token: str | None, expect: int) -> float:
    """Bytes the audit folder grew per request over start, REQUESTS requests, stop."""
    server.start()
    before = server.audit_bytes()
    try:
        await requests(server, name, token, expect)
    finally:
        server.stop()
    return (server.audit_bytes() - before) / REQUESTS


async def item4(tmp: Path, token: str) -> None:
    server = Server(tmp / "item4", token)
    denied = await audit_growth(server, NAME, None, 401)
    allowed = await audit_growth(server, "bench-ed25519", token, 200)
    print(f"== item 4: audit bytes, {REQUESTS} no-token requests with {len(NAME):,}-character "
          f"names from one source (server: {SERVER_PATH}) ==")
    print(f"FIGURE item4 denied_bytes_per_1000={denied * 1000:,.0f} "
          f"bytes_per_denial={denied:,.1f} bytes_per_allowed_sign={allowed:,.1f} "
          f"ratio_denial_vs_allowed={denied / allowed:.3f}", flush=True)


async def probe(session: aiohttp.ClientSession, url: str, stop: asyncio.Event,
                seen: list[float], limit: int | None = None,
                refused: list[int] | None = None) -> None:
    """Probe until `stop`; the latency of every answer, and the statuses other than 200."""
    while not stop.is_set() and (limit is None or len(seen) < limit):
        started = time.perf_counter()
        async with session.get(url) as rsp:
            await rsp.read()
            if rsp.status != 200 and refused is not None:
                refused.append(rsp.status)
        seen.append(time.perf_counter() - started)
        await asyncio.sleep(PROBE_EVERY)


def figures(label: str, idle: list[float], busy: list[float], refused: list[int]) -> str:
    return (f"FIGURE item5 probe={label} idle_worst_ms={max(idle) * 1e3:.1f} "
            f"idle_p50_ms={statistics.median(idle) * 1e3:.1f} "
            f"batch_worst_ms={max(busy) * 1e3:.1f} "
            f"batch_p50_ms={statistics.median(busy) * 1e3:.1f} "
            f"probes_during_batch={len(busy)} not_200_during_batch={len(refused)}"
            f"{' (' + ','.join(map(str, sorted(set(refused)))) + ')' if refused else ''} "
            f"ratio_worst_batch_vs_idle={max(busy) / max(idle):.1f}")


async def item5(tmp: Path, token: str) -> None:
    server = Server(tmp / "item5", token)
    server.start()
    try:
        paths = [p for p in ("/health/keys", "/healthz") if http_status(server.url + p) == 200]
        missing = sorted({"/health/keys", "/healthz"} - set(paths))
        items = [{"input": base64.b64encode(b"item %d" % i).decode()} for i in range(1000)]
        async with aiohttp.ClientSession() as session:
            status, body = await post(session, server.sign_url("bench-rsa"), {"input": "bQ=="},
                                      token)
            if status != 200:
                raise RuntimeError(f"RSA sign: HTTP {status}: {str(body)[:200]}")
            idle: dict[str, list[float]] = {p: [] for p in paths}
            never = asyncio.Event()
            await asyncio.gather(*(probe(session, server.url + p, never, idle[p], 50)
                                   for p in paths))
            await asyncio.sleep(1.5)  # QKMS_KEY_CACHE_SECONDS=1: the key cache has expired
            busy: dict[str, list[float]] = {p: [] for p in paths}
            refused: dict[str, list[int]] = {p: [] for p in paths}
            done = asyncio.Event()
            probes = [asyncio.create_task(probe(session, server.url + p, done, busy[p],
                                                refused=refused[p]))
                      for p in paths]
            await asyncio.sleep(0.1)
            started = time.perf_counter()
            status, body = await post(session, server.sign_url("bench-rsa"),
                                      {"batch_input": items}, token)
            batch = time.perf_counter() - started
            done.set()
            await asyncio.gather(*probes)
        if status != 200:
            raise RuntimeError(f"batch: HTTP {status}: {str(body)[:200]}")
    finally:
        server.stop()
    print(f"== item 5: probe latency during one 1,000-item RSA-2048 batch after the key cache "
          f"expired (server: {SERVER_PATH}) ==")
    print(f"batch took {batch:.2f} s" + (f"; this tree has no {', '.join(missing)} (skipped)"
                                         if missing else ""))
    for path in paths:
        print(figures(path, idle[path], busy[path], refused[path]), flush=True)


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="qkms-bench-hardening-"))
    tmp.chmod(0o700)
    token = secrets.token_urlsafe(24)
    wanted = os.environ.get("QKMS_BENCH_OPS", "item4,item5").split(",")
    if "item4" in wanted:
        await item4(tmp, token)
    if "item5" in wanted:
        await item5(tmp, token)
    shutil.rmtree(tmp, ignore_errors=True)

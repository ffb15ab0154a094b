"""Load: 10,000 sign requests at 64 concurrent against a real ``qkms serve`` process, with
one process and with two data-plane workers.

Zero errors, and the server's RSS at the end within 10% of its RSS after warm-up
(a leak per request would show). Both figures are printed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.server.common import TOKENS
from tests.server.conftest import EXTRA, tokens_file
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def hammer(url: str, count: int, concurrency: int) -> int:
    headers = {"Authorization": f"Bearer {TOKENS['checkout']}"}
    body = {"input": base64.b64encode(os.urandom(1024)).decode()}
    errors = 0
    queue = iter(range(count))
    async with aiohttp.ClientSession(headers=headers) as session:
        async def worker() -> None:
            nonlocal errors
            for _ in queue:
                async with session.post(url, json=body) as rsp:
                    await rsp.read()
                    errors += rsp.status != 200
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


async def wait_up(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "qkms serve exited"
            try:
                async with session.get(url + "/health/keys") as rsp:
                    if rsp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("qkms serve did not come up")


def serving_rss_kib(pid: int, workers: int) -> int:
    """The RSS of what serves: the process itself, or its data-plane workers together."""
    if workers == 1:
        return rss_kib(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == workers, children
    return sum(rss_kib(int(child)) for child in children)


@pytest.mark.parametrize("workers", [1, 2])
async def test_10000_signs_at_64_concurrent_no_errors_and_flat_rss(tmp_path, workers) -> None:
    folder = tmp_path / "manifests"
    import shutil

    shutil.copytree(ROOT / "examples", folder)
    (folder / "extra.yaml").write_text(EXTRA)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"),
           "QKMS_DATA_DIR": str(tmp_path / "data"), "QKMS_DATA_PLANE_WORKERS": str(workers)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkms", "serve", "--manifests", str(folder),
         "--listen", f"127.0.0.1:{port}", "--tokens", str(tokens_file(tmp_path / "t.yaml"))],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_up(base, proc)
        url = base + "/v1/keys/payments/user-service-signing:sign"
        assert await hammer(url, 2000, 64) == 0  # warm-up
        warm = serving_rss_kib(proc.pid, workers)
        start = time.perf_counter()
        errors = await hammer(url, 10_000, 64)
        elapsed = time.perf_counter() - start
        end = serving_rss_kib(proc.pid, workers)
        print(f"\n10,000 signs at 64 concurrent, {workers} worker(s): {errors} errors, "
              f"{10_000 / elapsed:.0f} req/s; "
              f"RSS after warm-up {warm / 1024:.1f} MiB, at the end {end / 1024:.1f} MiB "
              f"({(end - warm) / warm:+.1%})")
        assert errors == 0
        assert end <= warm * 1.10
    finally:
        proc.terminate()
        proc.wait(timeout=30)

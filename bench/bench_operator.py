"""The operator at scale: 1,000 Ed25519 ManagedKeys until all are Ready, on the real control
plane (etcd + kube-apiserver + kube-controller-manager, tests/support/controlplane.py).

In the same run, a bare Kopf operator that only patches status (bench/bare_operator.py)
handles 1,000 objects; the figure is the ratio of the two times (target <= 1.5). Each side
gets a fresh control plane of its own, and both log in as the same ServiceAccount,
``qkms-system/qkms`` with the RBAC qkms ships (the bare operator needs a subset of it), so
both pay the same authentication and authorization on every call. Then the qkms operator's
peak RSS (target <= 250 MB) and its CPU while idle with 1,000 keys and their timers over
``QKMS_BENCH_IDLE_SECONDS`` (default 60; target <= 2% of one core).

    python -m bench.run operator       # QKMS_BENCH_KEYS (1000), QKMS_BENCH_IDLE_SECONDS
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.fixtures import OPERATOR_NAMESPACE, private_control_plane
from tests.support.kubeclient import KubeClient
from tests.support.operator_process import OperatorProcess
from tests.support.server_process import free_port

COUNT = int(os.environ.get("QKMS_BENCH_KEYS", "1000"))
IDLE = float(os.environ.get("QKMS_BENCH_IDLE_SECONDS", "60"))
NS = "bench"
MK = "qkms.io/v1alpha1/managedkeys"


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds used, peak RSS in KiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
                .splitlines() if line.startswith("VmHWM:"))
    return cpu, peak


def is_ready(body: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (body.get("status") or {}).get("conditions") or [])


async def wait_all_ready(kube: KubeClient, count: int) -> None:
    """Until `count` ManagedKeys in NS are Ready: one list, then a watch from its
    resourceVersion (no polling of a 1,000-item list, which would load the server)."""
    ready: set[str] = set()
    path = await kube.path(MK, NS)
    while True:
        listing = await kube.request("GET", path, timeout=120)
        ready = {b["metadata"]["name"] for b in listing["items"] if is_ready(b)}
        if len(ready) >= count:
            return
        version = listing["metadata"]["resourceVersion"]
        # A watch that ends (its timeout, a dropped connection): list again.
        with contextlib.suppress(TimeoutError, OSError, aiohttp.ClientError):
            async for event in kube.watch(MK, NS, resourceVersion=version,
                                          timeoutSeconds="240"):
                body = event.get("object") or {}
                if event.get("type") == "ERROR":
                    break  # 410 Gone: list again
                name = body["metadata"]["name"]
                if event["type"] != "DELETED" and is_ready(body):
                    ready.add(name)
                else:
                    ready.discard(name)
                if len(ready) >= count:
                    return


async def run_once(target: str, workdir: Path, env: dict[str, str],
                   idle: float = 0.0) -> tuple[float, int, float]:
    """Seconds until COUNT keys are Ready; peak RSS KiB; idle CPU share (if `idle`)."""
    async with private_control_plane(workdir / "controlplane") as cp:
        kube = cp.client
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": NS,
                                                      "labels": {"qkms.io/environment": "dev"}}})
        kubeconfig = await cp.service_account_kubeconfig(OPERATOR_NAMESPACE, "qkms",
                                                         workdir / "operator.kubeconfig")
        operator = OperatorProcess(target, kubeconfig=kubeconfig,
                                   workdir=workdir / "operator", env=env)
        await operator.start(timeout=60)
        try:
            start = time.perf_counter()
            waiter = asyncio.create_task(wait_all_ready(kube, COUNT))
            sem = asyncio.Semaphore(16)

            async def create(i: int) -> None:
                async with sem:
                    await kube.create(MK, {
                        "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                        "metadata": {"name": f"k{i:04d}", "namespace": NS},
                        "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "bench"}},
                        NS)
            await asyncio.gather(*(create(i) for i in range(COUNT)))
            await waiter
            elapsed = time.perf_counter() - start
            share = 0.0
            if idle > 0:
                await asyncio.sleep(5)  # let the last patches settle
                before, _ = proc_stat(operator.pid)
                await asyncio.sleep(idle)
                after, _ = proc_stat(operator.pid)
                share = (after - before) / idle
            _, peak = proc_stat(operator.pid)
            assert operator.running, operator.log_tail()
            return elapsed, peak, share
        finally:
            await operator.stop()


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qkms-bench-op-") as tmp:
        root = Path(tmp)
        bare, bare_peak, _ = await run_once("bench.bare_operator", root / "bare", {})
        env = {"QKMS_NAMESPACE": OPERATOR_NAMESPACE, "QKMS_STATE": "secrets",
               "QKMS_DATA_DIR": "data", "QKMS_API_LISTEN": f"127.0.0.1:{free_port()}"}
        ours, peak, idle = await run_once("qkms.k8s.handlers", root / "qkms", env, IDLE)
        print(f"== operator: {COUNT} Ed25519 ManagedKeys on the real kube-apiserver "
              f"(both operators as ServiceAccount {OPERATOR_NAMESPACE}/qkms) ==")
        print(f"FIGURE operator-scale: time to all Ready: qkms {ours:.1f} s, bare Kopf "
              f"{bare:.1f} s, ratio {ours / bare:.2f} (target <= 1.5)")
        print(f"FIGURE operator-rss: peak RSS: qkms operator {peak / 1024:.0f} MB "
              f"(target <= 250), bare Kopf {bare_peak / 1024:.0f} MB")
        print(f"FIGURE operator-idle: idle CPU with {COUNT} keys over {IDLE:.0f} s: "
              f"{idle:.2%} of one core (target <= 2%)")

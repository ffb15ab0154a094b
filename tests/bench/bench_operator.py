"""The operator at scale: 1,000 Ed25519 ManagedKeys until all are Ready, against kmock.

In the same run, a bare Kopf operator that only patches status handles 1,000 objects;
the figure is the ratio of the two times (target <= 1.5). Then the qkms operator's peak
RSS (target <= 250 MB) and its CPU while idle with 1,000 keys and their timers over
``QKMS_BENCH_IDLE_SECONDS`` (default 60; target <= 2% of one core).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tests.support.kube import KubeAPI, free_port, kube_api
from tests.support.operator_process import OperatorProcess

COUNT = int(os.environ.get("QKMS_BENCH_KEYS", "1000"))
IDLE = float(os.environ.get("QKMS_BENCH_IDLE_SECONDS", "60"))
NS = "bench"


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds used, peak RSS in KiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
                .splitlines() if line.startswith("VmHWM:"))
    return cpu, peak


async def ready_count(kube: KubeAPI) -> int:
    items = await kube.list("managedkeys", NS)
    return sum(1 for item in items
               if any(c.get("type") == "Ready" and c.get("status") == "True"
                      for c in (item.get("status") or {}).get("conditions", [])))


async def run_once(target: str, workdir: Path, env: dict[str, str]) -> tuple[float, int, float]:
    """Seconds until COUNT keys are Ready; peak RSS KiB; idle CPU share (qkms only)."""
    async with kube_api(workdir / "kube") as kube:
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": "qkms-system"}})
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": NS,
                                                      "labels": {"qkms.io/environment": "dev"}}})
        operator = OperatorProcess(target, kubeconfig=kube.kubeconfig,
                                   workdir=workdir / "operator", env=env)
        await operator.start()
        try:
            start = time.perf_counter()
            sem = asyncio.Semaphore(16)

            async def create(i: int) -> None:
                async with sem:
                    await kube.create("managedkeys", {
                        "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                        "metadata": {"name": f"k{i:04d}", "namespace": NS},
                        "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "bench"}},
                        NS)
            await asyncio.gather(*(create(i) for i in range(COUNT)))
            while await ready_count(kube) < COUNT:
                await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - start
            idle = 0.0
            if "QKMS_NAMESPACE" in env and IDLE > 0:
                await asyncio.sleep(5)  # let the last patches settle
                before, _ = proc_stat(operator.pid)
                await asyncio.sleep(IDLE)
                after, _ = proc_stat(operator.pid)
                idle = (after - before) / IDLE
            _, peak = proc_stat(operator.pid)
            return elapsed, peak, idle
        finally:
            await operator.stop()


async def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qkms-bench-op-") as tmp:
        root = Path(tmp)
        bare, bare_peak, _ = await run_once("tests.bench.bare_operator", root / "bare", {})
        env = {"QKMS_NAMESPACE": "qkms-system", "QKMS_STATE": "secrets",
               "QKMS_DATA_DIR": "data", "QKMS_API_LISTEN": f"127.0.0.1:{free_port()}"}
        ours, peak, idle = await run_once("qkms.k8s.handlers", root / "qkms", env)
        print(f"== operator: {COUNT} Ed25519 ManagedKeys against kmock ==")
        print(f"time to all Ready: qkms {ours:.1f} s, bare Kopf {bare:.1f} s, "
              f"ratio {ours / bare:.2f} (target <= 1.5)")
        print(f"peak RSS: qkms operator {peak / 1024:.0f} MB (target <= 250), "
              f"bare Kopf {bare_peak / 1024:.0f} MB")
        print(f"idle CPU with {COUNT} keys over {IDLE:.0f} s: {idle:.2%} of one core "
              f"(target <= 2%)")

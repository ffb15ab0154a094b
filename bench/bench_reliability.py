"""The long-running reliability checks of ``tests/reliability`` (issue 7), one command:

    python -m bench.run reliability        # ~15 min on two cores

1. crash mid-rotation at full size: 100 rotating keys on LOCAL_DEV, 50 on OpenBao, each
   on a control plane of its own (etcd + kube-apiserver + kube-controller-manager);
2. provider outages of 30 s under steady traffic (OpenBao stopped, moto paused);
2b. Kubernetes outages of 30 s under the operator (``kube``): kube-apiserver stopped, and
   etcd stopped, each on a control plane of its own and restarted with its state;
3. load: 10,000 data-plane operations at 64 concurrent on each of Ed25519 (sign),
   AES-256-GCM (encrypt) and ML-DSA-65 (sign) against a ``qkms serve`` process:
   0 errors, RSS at the end within 10% of RSS after warm-up;
4. 1,000 keys rotating every ``PT30S`` for 5 minutes in standalone mode (the same
   reconciler as the operator): no rotation missed, no key's rotation later than one
   interval, each key's timeline from its own version timestamps.

Each check prints ``FIGURE`` lines (the tests' format) and rewrites its own table
(``figures:bench-<check>``) in ``tests/reliability/README.md`` as soon as it is done.
Knobs: ``QKMS_BENCH_RELIABILITY`` (comma-separated subset of crash,outage,kube,load,
rotation),
``QKMS_BENCH_ROTATION_KEYS`` (1000), ``QKMS_BENCH_ROTATION_SECONDS`` (300),
``QKMS_BENCH_LOAD_OPS`` (10000).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from qkms.config import Settings
from qkms.model import durations
from qkms.standalone import Standalone
from tests.reliability import report
from tests.reliability.test_faults_crash import crash_mid_rotation
from tests.reliability.test_faults_kube_outage import kube_outage
from tests.reliability.test_faults_provider_outage import moto, openbao, provider_outage
from tests.server.conftest import tokens_file
from tests.server.test_load import hammer, rss_kib, wait_up
from tests.support.fixtures import private_control_plane
from tests.support.moto import MotoServer
from tests.support.openbao import OpenBao
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[1]  # the repository
CHECKS = os.environ.get("QKMS_BENCH_RELIABILITY",
                        "crash,outage,kube,load,rotation").split(",")
ROTATION_KEYS = int(os.environ.get("QKMS_BENCH_ROTATION_KEYS", "1000"))
ROTATION_SECONDS = float(os.environ.get("QKMS_BENCH_ROTATION_SECONDS", "300"))
ROTATION_SCHEDULE = "PT30S"
LOAD_OPS = int(os.environ.get("QKMS_BENCH_LOAD_OPS", "10000"))
CONCURRENCY = 64
FIGURES: list[tuple[str, str]] = []  # (check name, line)


def figure(check: str, line: str, ok: bool) -> None:
    print(line + ("" if ok else "  <-- FAILS"), flush=True)
    FIGURES.append((check, line + ("" if ok else " [FAILS]")))


# -- 1. crash mid-rotation -------------------------------------------------------------------

async def crash(tmp: Path) -> None:
    async with private_control_plane(tmp / "controlplane-local") as cp:
        figures = await crash_mid_rotation(cp, tmp / "local", 100)
    figure("crash", figures.line(), _clean(figures))
    vault = OpenBao(tmp / "openbao", raft=True)
    vault.start()
    try:
        async with private_control_plane(tmp / "controlplane-vault") as cp:
            figures = await crash_mid_rotation(cp, tmp / "vault", 50,
                                               provider="HASHICORP_VAULT", vault=vault)
    finally:
        vault.stop()
    figure("crash", figures.line(), _clean(figures))


def _clean(figures: Any) -> bool:
    return (not figures.lost and not figures.multi_active and not figures.status_mismatch
            and figures.projections_ok == figures.keys and not figures.not_resumed
            and not figures.duplicate_keys and not figures.duplicate_created
            and figures.audit_ok and not figures.orphans and not figures.intents_left)


# -- 2. 30 s provider outages ------------------------------------------------------------------

async def outage(tmp: Path) -> None:
    vault = OpenBao(tmp / "openbao-outage", raft=True)
    vault.start()
    try:
        result = await provider_outage(tmp / "vault", openbao(vault), outage=30.0)
    finally:
        vault.stop()
    figure("outage", result.line(), _outage_ok(result))
    server = MotoServer(tmp / "moto")
    server.start()
    try:
        result = await provider_outage(tmp / "aws", moto(server), outage=30.0)
    finally:
        server.stop()
    figure("outage", result.line(), _outage_ok(result))


def _outage_ok(result: Any) -> bool:
    return (not result.other and not result.lost and result.health_during == 503
            and "KMS provider unavailable" in result.degraded and result.cpu_outage < 0.5)


# -- 2b. 30 s Kubernetes outages ----------------------------------------------------------------

async def kube(tmp: Path) -> None:
    for fault in ("apiserver", "etcd"):
        result = await kube_outage(tmp / fault, fault, outage=30.0, steady_keys=88)
        figure("kube", result.line(), not result.problems())


# -- 3. load ---------------------------------------------------------------------------------

LOAD_KEYS = {  # name -> (algorithm, usage, operation, body)
    "ed": ("Ed25519", "SIGNING", "sign"),
    "aes": ("AES-256-GCM", "ENCRYPTION", "encrypt"),
    "mldsa": ("ML-DSA-65", "SIGNING", "sign"),
}


async def load(tmp: Path) -> None:
    folder = tmp / "manifests"
    folder.mkdir(parents=True)
    docs = [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "payments", "labels": {"qkms.io/environment": "dev"}}}]
    docs += [{"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
              "metadata": {"name": name, "namespace": "payments"},
              "spec": {"usage": usage, "algorithm": algorithm, "owner": "load"}}
             for name, (algorithm, usage, _) in LOAD_KEYS.items()]
    (folder / "keys.yaml").write_text(yaml.safe_dump_all(docs))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
           "QKMS_DATA_DIR": str(tmp / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkms", "serve", "--manifests", str(folder), "--listen",
         f"127.0.0.1:{port}", "--tokens", str(tokens_file(tmp / "tokens.yaml"))],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_up(base, proc)
        urls = {name: f"{base}/v1/keys/payments/{name}:{op}"
                for name, (_, _, op) in LOAD_KEYS.items()}
        for url in urls.values():  # warm-up: every code path, caches, audit segment
            errors = await hammer(url, 2000, CONCURRENCY)
            assert errors == 0, f"warm-up errors on {url}"
        warm = rss_kib(proc.pid)
        peak = warm
        for name, url in urls.items():
            started = time.perf_counter()
            errors = await hammer(url, LOAD_OPS, CONCURRENCY)
            seconds = time.perf_counter() - started
            end = rss_kib(proc.pid)
            peak = max(peak, end)
            algorithm, _, op = LOAD_KEYS[name]
            figure("load", f"FIGURE load[{algorithm} {op}]: {LOAD_OPS} ops at {CONCURRENCY} "
                           f"concurrent: errors={errors} {LOAD_OPS / seconds:.0f} req/s; RSS "
                           f"{end / 1024:.1f} MiB vs {warm / 1024:.1f} MiB after warm-up "
                           f"({(end - warm) / warm:+.1%})", errors == 0 and end <= warm * 1.10)
        figure("load", f"FIGURE load[RSS]: after warm-up {warm / 1024:.1f} MiB, peak "
                       f"{peak / 1024:.1f} MiB ({(peak - warm) / warm:+.1%}; bound +10%)",
               peak <= warm * 1.10)
    finally:
        proc.terminate()
        proc.wait(timeout=30)



# -- 4. 1,000 keys rotating for 5 minutes ------------------------------------------------------

async def rotation(tmp: Path) -> None:
    folder = tmp / "manifests"
    folder.mkdir(parents=True)
    docs = [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "fleet", "labels": {"qkms.io/environment": "dev"}}}]
    docs += [{"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
              "metadata": {"name": f"k{i:04d}", "namespace": "fleet"},
              "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "fleet",
                       "rotationSchedule": ROTATION_SCHEDULE, "gracePeriod": "PT5S"}}
             for i in range(ROTATION_KEYS)]
    (folder / "keys.yaml").write_text(yaml.safe_dump_all(docs))
    standalone = Standalone(Settings(data_dir=tmp / "data", key_cache_seconds=0), folder,
                            tmp / "out", say=lambda line: None)
    stop = asyncio.Event()
    started = datetime.now(UTC)
    task = asyncio.create_task(standalone.run(stop, poll=1.0))
    await asyncio.sleep(ROTATION_SECONDS)
    ended = datetime.now(UTC)
    stop.set()
    await task
    interval = durations.seconds(ROTATION_SCHEDULE)
    service = standalone.registry.all()[0]
    records = service.user_records()
    rotations = missed = late_keys = 0
    worst_gap = worst_drift = 0.0
    for record in records:
        times = [v.created_at for v in record.versions]
        rotations += len(times) - 1
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
        worst_gap = max([worst_gap, *gaps])
        # Due times follow the actual rotations (next = last + interval): each rotation's
        # lateness is its gap minus the interval; a key is late if any exceeds one interval.
        lateness = [g - interval for g in gaps]
        if any(late > interval for late in lateness):
            late_keys += 1
        # Missed: whole intervals that passed after the last rotation (or creation) with no
        # rotation, beyond the one in progress at the end.
        since_last = (ended - times[-1]).total_seconds()
        missed += max(0, int(since_last // interval) - 1)
        worst_drift = max([worst_drift, *lateness, since_last - interval])
    expected = sum(int((ended - r.versions[0].created_at).total_seconds() // interval)
                   for r in records)
    ok = len(records) == ROTATION_KEYS and missed == 0 and late_keys == 0
    figure("rotation", f"FIGURE rotation-at-scale[standalone]: keys={len(records)} schedule="
                       f"{ROTATION_SCHEDULE} for {(ended - started).total_seconds():.0f}s: "
                       f"rotations={rotations} (ideal {expected}) missed={missed} "
                       f"keys_late_by_more_than_one_interval={late_keys} "
                       f"worst_gap={worst_gap:.1f}s worst_lateness={worst_drift:.1f}s "
                       f"(bound {interval:.0f}s)", ok)


# -- driver ----------------------------------------------------------------------------------

async def main() -> None:
    steps: dict[str, Callable[[Path], Awaitable[None]]] = {
        "crash": crash, "outage": outage, "kube": kube, "load": load, "rotation": rotation}
    tmp = Path(tempfile.mkdtemp(prefix="qkms-bench-reliability-"))
    try:
        for name in (n.strip() for n in CHECKS):
            started, first = time.monotonic(), len(FIGURES)
            print(f"== reliability: {name} ==", flush=True)
            try:
                await steps[name](tmp / name)
            except Exception as exc:  # one broken check must not hide the others' figures
                figure(name, f"FIGURE {name}: ERROR {type(exc).__name__}: {exc}", False)
            elapsed = time.monotonic() - started
            print(f"   ({elapsed:.0f}s)", flush=True)
            write_table(name, FIGURES[first:], elapsed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_table(name: str, figures: list[tuple[str, str]], elapsed: float) -> None:
    """This check's table in tests/reliability/README.md (the others keep theirs)."""
    failing = sum(1 for _, line in figures if line.endswith("[FAILS]"))
    header = (f"_`{name}`: {report.stamp()}; {len(figures)} figures, {failing} failing, "
              f"{elapsed:.0f} s._")
    rows = [report.Row(*report.split(line), f"bench_reliability::{check}",
                       "FAIL" if line.endswith("[FAILS]") else "pass")
            for check, line in figures]
    report.write_section(f"bench-{name}", report.table(rows, header))

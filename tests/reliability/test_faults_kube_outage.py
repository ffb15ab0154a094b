"""Kubernetes control-plane faults under a running operator: kube-apiserver stopped, and etcd
restarted, each with the cluster's state kept, and the operator left to recover by itself.

Each test has a control plane of its own (etcd + kube-apiserver + kube-controller-manager,
tests/support/controlplane.py), so stopping its servers disturbs no other test; the
operator logs in as its own ServiceAccount with the RBAC it ships. The fault comes:

* right after a burst of new ManagedKeys (some half-way: material written, catalog write
  refused), and
* while a key on a short schedule falls due (its rotation cannot be written meanwhile).

The faults:

* **API server outage**: kube-apiserver is stopped (SIGTERM; SIGKILL after 5 s, since with
  watches open it lingers) and started again ``OUTAGE`` seconds after the signal, on the
  same port with the same certificates; etcd keeps running, so the cluster's state is all
  there. The operator's connections are refused meanwhile.
* **etcd restart**: etcd is stopped the same way, with its data folder kept, and started
  again ``OUTAGE`` seconds later; kube-apiserver stays up and answers errors (or nothing)
  meanwhile, which is the other way an API "goes away".

Afterwards: the operator process never died; it reconnects (the time until a ManagedKey
created once the API is back becomes Ready is printed as ``reconnect_s``); every ManagedKey
has exactly one key in the store, one ``CREATE`` success in the audit chain and exactly
one ``KeyCreated`` Event (one whose reconcile lost the API after making the key is posted
from the audit chain once the API is back: k8s/announcer.py); the due key is rotated after
the reconnection; keys created after it become Ready, all within seconds of the API's
return (``resumed_s``). Orphaned material from creations the outage cut short is counted
and named, never silent.

``QKMS_RELIABILITY_KUBE_OUTAGE_SECONDS`` sets the outage (30 s, as in the bench) and
``QKMS_RELIABILITY_KUBE_OUTAGE_STEADY`` the keys made before it (6; 88 makes 100 keys in
all, as ``bench/bench_reliability.py`` does).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.reliability.test_faults_crash import (
    MK,
    NS,
    audit_verify,
    audited_creates,
    create_all,
    events_by_reason,
    is_ready,
    managed_key,
    namespaces,
    operator_login,
    qkms_operator,
    replica,
    version_of,
)
from tests.support.controlplane import ControlPlane
from tests.support.fixtures import private_control_plane
from tests.support.kubeclient import eventually

STEADY = int(os.environ.get("QKMS_RELIABILITY_KUBE_OUTAGE_STEADY", "6"))  # made before
BURST = 10  # keys created just before the API goes away
OUTAGE = float(os.environ.get("QKMS_RELIABILITY_KUBE_OUTAGE_SECONDS", "30"))
DUE_SCHEDULE = 5.0  # seconds: the due key's schedule, shorter than any outage here
FIGURE_NAMES = {"apiserver": "kube-api-outage", "etcd": "etcd-restart"}


@dataclass
class OutageFigures:
    fault: str
    outage: float
    keys: int = 0
    burst_ready: int = 0
    ready_seconds: float = 0.0  # from the restart until kube-apiserver's /readyz is ok
    operator_alive: bool = False
    reconnect_seconds: float = 0.0
    resume_seconds: float = 0.0
    store_names: list[str] = field(default_factory=list)
    expected_names: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    multi_active: list[str] = field(default_factory=list)
    intents_left: list[str] = field(default_factory=list)
    audited: Counter[str] = field(default_factory=Counter)
    created: Counter[str] = field(default_factory=Counter)
    due_from: int = 0
    due_to: int = 0
    due_late: float = 0.0
    orphans: list[str] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        events = Counter(self.created[n.split("/", 1)[1]] for n in self.expected_names)
        stopped = "kube-apiserver" if self.fault == "apiserver" else "etcd"
        return (f"FIGURE {FIGURE_NAMES[self.fault]}: keys={self.keys} "
                f"outage_s={self.outage:.1f} ({stopped} stopped, state kept; API ready "
                f"{self.ready_seconds:.1f}s after the restart) "
                f"burst_ready_when_stopped={self.burst_ready}/{BURST} "
                f"operator_alive={self.operator_alive} reconnect_s={self.reconnect_seconds:.1f} "
                f"(a key created after the restart Ready) resumed_s={self.resume_seconds:.1f} "
                f"store_keys={len(self.store_names)} lost={len(self.lost())} "
                f"multi_active={len(self.multi_active)} duplicates={len(self.duplicates)} "
                f"audited_creates_max={max(self.audited.values(), default=0)} "
                f"keycreated_events={dict(sorted(events.items()))} "
                f"due_rotated={self.due_to > self.due_from} (v{self.due_from}->v{self.due_to}, "
                f"{self.due_late:.1f}s after due) orphans={len(self.orphans)} "
                f"intents_left={len(self.intents_left)} "
                f"audit={'verified' if self.audit.get('ok') else 'FAILED'}")

    def lost(self) -> list[str]:
        return sorted(set(self.expected_names) - set(self.store_names))

    def problems(self) -> list[str]:
        found = []
        if not self.operator_alive:
            found.append("the operator died during the outage")
        if sorted(self.store_names) != sorted(self.expected_names):
            found.append(f"store keys {self.store_names} != {self.expected_names}")
        if self.duplicates:
            found.append(f"duplicate keys {self.duplicates}")
        if self.multi_active:
            found.append(f"not exactly one ACTIVE version: {self.multi_active}")
        # What a creation cut short by the outage made is swept (every 2 s here).
        if self.orphans or self.intents_left:
            found.append(f"orphans {self.orphans}, intents left open {self.intents_left}")
        if any(self.audited[n] != 1 for n in self.expected_names):
            found.append(f"committed CREATEs per key not all 1: {dict(self.audited)}")
        # A key whose reconcile lost the API before its Event is announced from the chain.
        events = {n: self.created[n.split("/", 1)[1]] for n in self.expected_names}
        if any(c != 1 for c in events.values()):
            found.append(f"KeyCreated Events not exactly one per key: {events}")
        if self.due_to <= self.due_from:
            found.append("the due key did not rotate after the outage")
        if not self.audit.get("ok"):
            found.append(f"audit: {self.audit}")
        return found


async def inject(cp: ControlPlane, fault: str, outage: float) -> tuple[float, float]:
    """Take the API away for `outage` seconds (from the stop signal to the restart, the
    stopping included) and bring it back, state kept. Returns (seconds from the stop signal
    to the restart, seconds from there until the API server is ready)."""
    stopped = time.monotonic()
    if fault == "apiserver":
        await cp.stop_apiserver()
    elif fault == "etcd":
        await cp.stop_etcd()
    else:
        raise ValueError(fault)
    await asyncio.sleep(max(0.0, outage - (time.monotonic() - stopped)))
    restarted = time.monotonic()
    if fault == "apiserver":
        await cp.start_apiserver()
    else:
        await cp.start_etcd()
        await cp.wait_ready()
    return restarted - stopped, time.monotonic() - restarted


async def kube_outage(workdir: Path, fault: str, outage: float = OUTAGE,
                      steady_keys: int = STEADY) -> OutageFigures:
    """The whole scenario on a control plane of its own; `fault` is apiserver or etcd;
    `steady_keys` are made before the burst."""
    figures = OutageFigures(fault, outage)
    async with private_control_plane(workdir / "controlplane") as cp:
        kube = cp.client
        await namespaces(kube, NS)
        operator = qkms_operator(await operator_login(cp, workdir), workdir / "operator")
        try:
            await operator.start(timeout=60)
            steady = [f"steady-{i}" for i in range(steady_keys)]
            await create_all(kube, [managed_key(n, rotationSchedule="PT1H") for n in steady]
                             + [managed_key("due", rotationSchedule=f"PT{DUE_SCHEDULE:.0f}S",
                                            gracePeriod="PT1S",
                                            projection={"secretName": "due-public"})])

            async def all_ready() -> bool:
                found = {b["metadata"]["name"]: b for b in await kube.list(MK, NS)}
                return len(found) == steady_keys + 1 and all(map(is_ready, found.values()))
            await eventually(all_ready, timeout=40 + steady_keys, what="keys Ready",
                             context=operator.log_tail)

            # A burst of creations, then the API goes away mid-way through them.
            await create_all(kube, [managed_key(f"burst-{i}") for i in range(BURST)])
            figures.due_from = version_of(await kube.get(MK, "due", NS) or {})
            figures.burst_ready = sum(1 for b in await kube.list(MK, NS)
                                      if b["metadata"]["name"].startswith("burst-")
                                      and is_ready(b))
            # The due key's rotation falls due in here.
            figures.outage, figures.ready_seconds = await inject(cp, fault, outage)
            back_at = time.monotonic()
            figures.operator_alive = operator.running

            # Reconnected: a key created now is seen and made.
            await kube.create(MK, managed_key("after"), NS)

            async def after_ready() -> bool:
                return is_ready(await kube.get(MK, "after", NS) or {})
            await eventually(after_ready, timeout=120 + outage, interval=0.2,
                             what="a key created after the restart Ready",
                             context=operator.log_tail)
            figures.reconnect_seconds = time.monotonic() - back_at

            # Everything resumes: the due key rotates and the burst becomes Ready.
            async def resumed() -> dict[str, Any] | None:
                found = {b["metadata"]["name"]: b for b in await kube.list(MK, NS)}
                done = (len(found) == steady_keys + BURST + 2
                        and all(map(is_ready, found.values()))
                        and version_of(found["due"]) > figures.due_from)
                return found if done else None
            found = await eventually(resumed, timeout=90 + outage, interval=0.2,
                                     what="resumed after the outage", context=operator.log_tail)
            figures.resume_seconds = time.monotonic() - back_at
            figures.operator_alive = figures.operator_alive and operator.running
            await kube.patch(MK, "due", {"spec": {"rotationSchedule": "PT1H"}}, NS)
            await asyncio.sleep(1.0)
            await operator.stop()

            figures.keys = len(found)
            figures.expected_names = sorted(f"{NS}/{n}" for n in found)
            store = replica(cp, workdir)
            figures.store_names = [r.name for r in store.user_records()]
            figures.duplicates = sorted(n for n, c in Counter(figures.store_names).items()
                                        if c > 1)
            figures.created = await events_by_reason(kube, "KeyCreated")
            figures.audited = audited_creates(operator.cwd / "data" / "dev")
            referenced = {v.key_id for r in store.catalog.all() for v in r.versions}
            figures.orphans = sorted(set(store.sealed.list("material")) - referenced)
            figures.intents_left = [i.key_id for i in store.intents.pending()]
            figures.multi_active = sorted(
                r.name for r in store.user_records()
                if sum(v.state.value == "ACTIVE" for v in r.versions) != 1)
            figures.audit = audit_verify(operator.cwd / "data" / "dev")
            versions = found["due"]["status"]["versions"]
            figures.due_to = version_of(found["due"])
            figures.due_late = (datetime.fromisoformat(versions[figures.due_from]["createdAt"])
                                - datetime.fromisoformat(
                                    versions[figures.due_from - 1]["createdAt"])
                                - timedelta(seconds=DUE_SCHEDULE)).total_seconds()
        finally:
            await operator.stop()
            if not figures.audit.get("ok"):
                print(operator.log_tail(60))
    return figures


def report(figures: OutageFigures) -> None:
    print(figures.line())
    if figures.orphans:
        print(f"  orphaned material (creation cut short by the outage): {figures.orphans}")


async def test_api_server_outage_operator_reconnects_without_duplicates_or_missed_rotations(
        tmp_path: Path) -> None:
    figures = await kube_outage(tmp_path, "apiserver")
    report(figures)
    assert not figures.problems(), figures.problems()


async def test_etcd_restart_operator_recovers_without_duplicates_or_missed_rotations(
        tmp_path: Path) -> None:
    figures = await kube_outage(tmp_path, "etcd")
    report(figures)
    assert not figures.problems(), figures.problems()

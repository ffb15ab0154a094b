"""Operator crash mid-rotation: ``kill -9`` under 100 rotating keys, restart, count the damage.

The real operator (Kopf + qkms handlers, its own process) runs against the real control
plane (etcd + kube-apiserver + kube-controller-manager, tests/support/controlplane.py),
logged in as its own ServiceAccount with the RBAC it ships, with the key records in
Secrets, as in a cluster. Keys rotate every 6 s with a 2 s grace; once rotations are under
way the operator is SIGKILLed and started again in a fresh working directory, so only what
the API holds survives. Then:

* keys lost: a ManagedKey whose status keyId (or any listed version) does not resolve
  in the store, read by a second service over the same Secrets (as a replica would);
* exactly one ACTIVE version per key, in the store and in the status;
* orphaned provider records: material (LOCAL_DEV) or transit keys/versions (OpenBao)
  that no catalog version references: a crash between the provider write and the
  catalog write leaves one. They are counted at the kill and again once the restarted
  operator's sweep has resolved every open intent (store/intents.py): none may be left;
* projections: the projected ``key-id`` equals the status keyId;
* every rotation resumed (each key's version rose after the restart); no key was made
  again (each key's first version is the same as before the kill) and no KeyCreated
  Event was posted twice. A key whose creation the kill cut short after the catalog
  write is made but never announced (Events are best effort): counted, not failed;
* ``qkms audit verify`` passes on each run's chain (``run-N/data/dev/audit``).

Only the operator is killed, never a server, so the tests use the session's control plane
(reset after each test); ``bench/bench_reliability.py`` gives the scenario one of
its own. The default run uses ``QKMS_RELIABILITY_CRASH_KEYS`` keys (100, as the issue asks:
about 40 s on the real control plane; the OpenBao variant takes half as many); the bench
runs 100 on a control plane of its own. The figure line says which. This module also
holds the helpers the Kubernetes-outage test shares.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from qkms.config import Settings
from qkms.k8s.secret_store import SecretRecordStore, load_or_create_kek_secret
from qkms.model.enums import Environment
from qkms.service import AUDIT_KEY, KeyManagementService
from tests.support.controlplane import ControlPlane
from tests.support.kubeclient import KubeClient, eventually
from tests.support.openbao import make_openbao_raft  # noqa: F401 - fixture
from tests.support.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
NS = "rotating"
MK = "managedkeys"
SYSTEM_NS = "qkms-system"
CRASH_KEYS = int(os.environ.get("QKMS_RELIABILITY_CRASH_KEYS", "100"))


# -- shared helpers (also used by test_faults_kube_outage.py and the bench) ------------------

async def namespaces(kube: KubeClient, *names: str, environment: str = "dev") -> None:
    """The test's namespaces (``qkms-system`` comes with the control plane's base install)."""
    for name in names:
        await kube.create("namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"qkms.io/environment": environment}}})


async def operator_login(cp: ControlPlane, workdir: Path) -> Path:
    """A kubeconfig of the operator's own ServiceAccount (manifests/02, 03): never admin."""
    workdir.mkdir(parents=True, exist_ok=True)
    return await cp.service_account_kubeconfig(SYSTEM_NS, "qkms", workdir / "operator.kubeconfig")


def qkms_operator(kubeconfig: Path, workdir: Path, **env: str) -> OperatorProcess:
    """The qkms operator as run in test_operator_e2e.py, records in Secrets, no data plane.
    A killed run's intents are swept 3 s after they were written (120 s by default)."""
    return OperatorProcess("qkms.k8s.handlers", kubeconfig=kubeconfig, workdir=workdir,
                           env={"QKMS_NAMESPACE": SYSTEM_NS, "QKMS_STATE": "secrets",
                                "QKMS_DATA_DIR": "data", "QKMS_API_LISTEN": "",
                                "QKMS_INTENT_TIMEOUT_SECONDS": "3",
                                "QKMS_INTENT_SWEEP_SECONDS": "2", **env})


def managed_key(name: str, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    body = {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "reliability", **spec}
    return {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


async def create_all(kube: KubeClient, bodies: Iterable[dict[str, Any]], parallel: int = 8) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(body: dict[str, Any]) -> None:
        async with gate:
            await kube.create(MK, body, body["metadata"]["namespace"])
    await asyncio.gather(*(one(b) for b in bodies))


async def patch_all(kube: KubeClient, names: Iterable[str], patch: dict[str, Any],
                    namespace: str = NS, parallel: int = 8) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(name: str) -> None:
        async with gate:
            await kube.patch(MK, name, patch, namespace)
    await asyncio.gather(*(one(n) for n in names))


def conditions(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def is_ready(body: dict[str, Any]) -> bool:
    return conditions(body).get("Ready", {}).get("status") == "True"


def version_of(body: dict[str, Any]) -> int:
    return int((body.get("status") or {}).get("currentVersion") or 0)


async def all_keys(kube: KubeClient, namespace: str = NS) -> dict[str, dict[str, Any]]:
    return {b["metadata"]["name"]: b for b in await kube.list(MK, namespace)}


def replica(cp: ControlPlane, workdir: Path) -> KeyManagementService:
    """A second qkms instance over the operator's Secrets (``service_for`` in the e2e test),
    reading them as the test's admin."""
    api = k8s_config.new_client_from_config(config_file=str(cp.kubeconfig))
    core = k8s_client.CoreV1Api(api)
    settings = Settings(environment=Environment.DEV, data_dir=workdir / "replica")
    records = SecretRecordStore(core, SYSTEM_NS, "dev", watch=False)  # a one-shot reader
    return KeyManagementService(settings, records=records,
                                kek=load_or_create_kek_secret(core, SYSTEM_NS))


def audit_verify(data_dir: Path) -> dict[str, Any]:
    """``qkms audit verify --json`` on one run's data dir, as an operator would run it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "qkms", "audit", "verify", "--json",
                           "--data-dir", str(data_dir)], capture_output=True, text=True,
                          env=env, timeout=120)
    try:
        answer: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        answer = {"ok": False, "finding": done.stdout + done.stderr}
    answer["exit"] = done.returncode
    return answer


def run_audit_dirs(operator: OperatorProcess, environment: str = "dev") -> list[Path]:
    return [operator.workdir / f"run-{run}" / "data" / environment
            for run in range(1, operator.runs + 1)]


def audited_creates(data_dir: Path) -> Counter[str]:
    """Committed CREATEs per key name in the chain under ``data_dir``: successes, less those
    a later error entry for the same key ID withdraws (the catalog refused the write)."""
    from qkms.audit.encoding import decode, is_entry
    from qkms.audit.store import iter_log

    made: dict[str, str] = {}  # key ID -> key name
    if (data_dir / "audit" / "segments").is_dir():
        for record in iter_log(data_dir / "audit"):
            if not is_entry(record.block):
                continue
            value = decode(record.block)
            if value.get("operation") != "CREATE" or not value.get("keyId"):
                continue
            if value.get("result") == "success":
                made[value["keyId"]] = str(value.get("keyName"))
            else:
                made.pop(value["keyId"], None)
    return Counter(made.values())


async def events_by_reason(kube: KubeClient, reason: str, namespace: str = NS) -> Counter[str]:
    return Counter(e["involvedObject"]["name"] for e in await kube.list("events", namespace)
                   if e.get("reason") == reason)


async def vault_policy(kube: KubeClient, vault: Any, environment: str = "dev",
                       **settings: str) -> None:
    """The environment's KeyPolicy on OpenBao; the token reaches qkms through the policy's
    credentialsSecretRef (a Secret in the operator's namespace), never inline."""
    await kube.create("secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"vault-{environment}"},
        "data": {"token": base64.b64encode(vault.token.encode()).decode()}}, SYSTEM_NS)
    await kube.create("keypolicies", {
        "apiVersion": "qkms.io/v1alpha1", "kind": "KeyPolicy",
        "metadata": {"name": environment},
        "spec": {"environment": environment,
                 "provider": {"type": "HASHICORP_VAULT",
                              "settings": {"address": vault.address, "mountPath": "transit",
                                           **settings},
                              "credentialsSecretRef": {"name": f"vault-{environment}"}}}})


# -- the crash scenario ---------------------------------------------------------------------

@dataclass
class CrashFigures:
    provider: str
    keys: int
    rotations_before_kill: int = 0
    versions_at_kill: dict[str, int] = field(default_factory=dict)
    resume_seconds: float = 0.0
    lost: list[str] = field(default_factory=list)
    multi_active: list[str] = field(default_factory=list)
    status_mismatch: list[str] = field(default_factory=list)
    orphans_at_kill: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # once the sweep is done
    intents_left: list[str] = field(default_factory=list)
    projections_ok: int = 0
    projections: int = 0
    not_resumed: list[str] = field(default_factory=list)
    first_at_kill: dict[str, str] = field(default_factory=dict)  # name -> first version
    duplicate_keys: list[str] = field(default_factory=list)  # made again after the restart
    duplicate_created: list[str] = field(default_factory=list)  # more than one KeyCreated
    created_event_missing: list[str] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)

    @property
    def audit_ok(self) -> bool:
        return bool(self.audit) and all(a.get("ok") and a["exit"] == 0 for a in self.audit)

    def line(self) -> str:
        audit = "verified" if self.audit_ok else "FAILED"
        entries = "+".join(str(a.get("entries")) for a in self.audit)
        return (f"FIGURE crash-mid-rotation[{self.provider}]: keys={self.keys} "
                f"rotations_before_kill={self.rotations_before_kill} lost={len(self.lost)} "
                f"multi_active={len(self.multi_active)} "
                f"orphans_at_kill={len(self.orphans_at_kill)} "
                f"orphans_after_sweep={len(self.orphans)} "
                f"intents_left={len(self.intents_left)} "
                f"projections_ok={self.projections_ok}/{self.projections} "
                f"status_mismatch={len(self.status_mismatch)} "
                f"not_resumed={len(self.not_resumed)} duplicate_keys={len(self.duplicate_keys)} "
                f"duplicate_created_events={len(self.duplicate_created)} "
                f"created_events_missing={len(self.created_event_missing)} "
                f"resume_s={self.resume_seconds:.1f} audit={audit} (runs={len(self.audit)}, "
                f"entries={entries})")


async def crash_mid_rotation(cp: ControlPlane, workdir: Path, keys: int, *,
                             provider: str = "LOCAL_DEV", vault: Any = None) -> CrashFigures:
    """Run the whole scenario on `cp` (its base install, nothing else yet); ``vault`` is an
    OpenBao (raft) for HASHICORP_VAULT."""
    figures = CrashFigures(provider, keys)
    kube = cp.client
    await namespaces(kube, NS)
    if vault is not None:
        await vault_policy(kube, vault)
    operator = qkms_operator(await operator_login(cp, workdir), workdir / "operator")
    # Besides the kill from outside, a kill placed where it leaves something half-made: the
    # operator SIGKILLs itself after a new version is made and before the catalog names it.
    failpoint = 3 * keys // 4
    operator.extra_args = ["-m", "tests.support.failpoints"]
    operator.extra_env["QKMS_TEST_KILL_AFTER_NEW_VERSIONS"] = str(failpoint)
    try:
        await operator.start(timeout=60)
        names = [f"k{i:03d}" for i in range(keys)]
        await create_all(kube, (managed_key(n, rotationSchedule="PT6S", gracePeriod="PT2S",
                                            projection={"secretName": f"{n}-public"})
                                for n in names))

        async def killed() -> dict[str, dict[str, Any]] | None:
            found = await all_keys(kube)
            return found if not operator.running else None
        # Rotations under way: the operator kills itself at its failpoint (3/4 of the
        # keys rotated once, or so); whatever the API holds then is what survives.
        at_kill = await eventually(killed, timeout=60 + keys, interval=0.2,
                                   what="the kill at the failpoint", context=operator.log_tail)
        await operator.kill()
        del operator.extra_env["QKMS_TEST_KILL_AFTER_NEW_VERSIONS"]
        figures.orphans_at_kill = orphans_in(replica(cp, workdir), vault)
        figures.versions_at_kill = {n: version_of(b) for n, b in at_kill.items()}
        figures.first_at_kill = {n: b["status"]["versions"][0]["keyId"]
                                 for n, b in at_kill.items()
                                 if (b.get("status") or {}).get("versions")}
        figures.rotations_before_kill = sum(v - 1 for v in figures.versions_at_kill.values())

        started = time.monotonic()
        await operator.start(timeout=60)  # a fresh working directory: run-2

        async def resumed() -> bool:
            found = await all_keys(kube)
            return all(version_of(found[n]) > v for n, v in figures.versions_at_kill.items())
        with contextlib.suppress(TimeoutError):
            await eventually(resumed, timeout=60 + keys / 2, interval=0.2,
                             what="every key rotated again after the restart")
        figures.resume_seconds = time.monotonic() - started
        found = await all_keys(kube)
        figures.not_resumed = sorted(n for n, v in figures.versions_at_kill.items()
                                     if version_of(found[n]) <= v)

        # Quiesce: a long schedule, so status, projections and store hold still.
        await patch_all(kube, names, {"spec": {"rotationSchedule": "PT1H"}})

        last: dict[str, dict[str, Any]] = {}

        async def settled() -> dict[str, dict[str, Any]] | None:
            found = await all_keys(kube)
            last.update(found)
            for body in found.values():
                status = body.get("status") or {}
                if (status.get("observedGeneration") != body["metadata"]["generation"]
                        or not is_ready(body)
                        or any(v["state"] == "GRACE" for v in status.get("versions", []))):
                    return None
            return found
        final = await eventually(settled, timeout=60 + keys / 2, interval=0.3,
                                 what="keys settled on the long schedule",
                                 context=lambda: unsettled(last))

        async def swept() -> bool:  # the killed run's intents, resolved by the new one
            return not await kube.list("secrets", SYSTEM_NS,
                                       labels="qkms.io/record-kind=intents")
        with contextlib.suppress(TimeoutError):  # what is left is counted, and fails
            await eventually(swept, timeout=30, interval=0.5, what="intents swept")
        await operator.stop()
        await check_outcome(cp, workdir, operator, final, figures, vault)
    finally:
        await operator.stop()
        if not figures.audit_ok:
            for run in range(1, operator.runs + 1):
                print(f"--- operator run {run} (tail) ---\n"
                      + "\n".join(operator.log(run).splitlines()[-40:]))
    return figures


def unsettled(found: dict[str, dict[str, Any]]) -> str:
    return "\n".join(f"{n}: generation {b['metadata']['generation']} status "
                     f"{json.dumps(b.get('status'))[:400]}" for n, b in found.items()
                     if not is_ready(b) or (b.get("status") or {}).get("observedGeneration")
                     != b["metadata"]["generation"])[:4000]


async def check_outcome(cp: ControlPlane, workdir: Path, operator: OperatorProcess,
                        final: dict[str, dict[str, Any]], figures: CrashFigures,
                        vault: Any) -> None:
    kube = cp.client
    store = replica(cp, workdir)
    records = {r.name: r for r in store.catalog.all()}
    for name, body in final.items():
        status = body["status"]
        record = records.get(f"{NS}/{name}")
        wanted = [status.get("keyId"), *(v["keyId"] for v in status.get("versions", []))]
        if record is None or any(store.catalog.name_for_key_id(k) != record.name
                                 for k in wanted):
            figures.lost.append(name)
            continue
        active = [v for v in record.versions if v.state.value == "ACTIVE"]
        shown = [v for v in status.get("versions", []) if v["state"] == "ACTIVE"]
        if len(active) != 1 or len(shown) != 1:
            figures.multi_active.append(name)
        elif active[0].key_id != status["keyId"]:
            figures.status_mismatch.append(name)
            print(f"  {name}: status {[(v['keyId'], v['state']) for v in status['versions']]}"
                  f" store {[(v.key_id, v.state.value) for v in record.versions]}")
        projected = await kube.get("secrets", f"{name}-public", NS)
        if projected is not None:
            figures.projections += 1
            key_id = base64.b64decode(projected["data"]["key-id"]).decode()
            figures.projections_ok += key_id == status["keyId"]
    figures.intents_left = [i.key_id for i in store.intents.pending()]
    figures.orphans = orphans_in(store, vault)
    created = await events_by_reason(kube, "KeyCreated")
    figures.duplicate_created = sorted(f"{n}:{created[n]}" for n in final if created[n] > 1)
    # An Event is best effort: a kill after the key's catalog write and before its Event
    # leaves the key made (and audited) but never announced.
    figures.created_event_missing = sorted(n for n in final if created[n] == 0)
    # A key made again after the restart would start a new chain of versions.
    figures.duplicate_keys = sorted(n for n, first in figures.first_at_kill.items()
                                    if final[n]["status"]["versions"][0]["keyId"] != first)
    figures.audit = [audit_verify(d) for d in run_audit_dirs(operator)]
    assert AUDIT_KEY in records  # the checkpoint key is shared by every run


def orphans_in(store: KeyManagementService, vault: Any) -> list[str]:
    """Provider records no catalog version names: material, or transit keys/versions."""
    records = store.catalog.all()
    if vault is not None:
        return transit_orphans(vault, records)
    referenced = {v.key_id for r in records for v in r.versions}
    return sorted(set(store.sealed.list("material")) - referenced)


def transit_orphans(vault: Any, records: Iterable[Any]) -> list[str]:
    """Transit keys no catalog version names, and transit versions past the newest one named
    (``name@version``): a rotation in Vault whose catalog write never happened."""
    newest: dict[str, int] = {}
    for record in records:
        for version in record.versions:
            ref = version.provider_ref
            if "transit_key" in ref:
                name = ref["transit_key"]
                newest[name] = max(newest.get(name, 0), int(ref["transit_version"]))
    client = vault.client()
    listed = client.list("transit/keys") or {"data": {"keys": []}}
    orphans = []
    for name in listed["data"]["keys"]:
        if name == "qkms-wrap":
            continue
        if name not in newest:
            orphans.append(name)
            continue
        latest = int(client.read(f"transit/keys/{name}")["data"]["latest_version"])
        orphans += [f"{name}@{v}" for v in range(newest[name] + 1, latest + 1)]
    return orphans


def report(figures: CrashFigures, note: str = "") -> None:
    print(figures.line() + (f" [{note}]" if note else ""))
    if figures.orphans:
        print(f"  orphans left after the sweep: {figures.orphans}")
    if figures.created_event_missing:
        print(f"  made but never announced (killed before the Event): "
              f"{figures.created_event_missing}")
    for run, result in enumerate(figures.audit, 1):
        if not result.get("ok"):
            print(f"  audit run-{run}: {result.get('finding')}")


def assert_clean(figures: CrashFigures) -> None:
    assert not figures.lost, f"keys lost: {figures.lost}"
    assert not figures.multi_active, f"not exactly one ACTIVE version: {figures.multi_active}"
    assert not figures.status_mismatch, f"status keyId != active: {figures.status_mismatch}"
    assert figures.projections_ok == figures.projections == figures.keys
    assert not figures.not_resumed, f"no rotation after the restart: {figures.not_resumed}"
    assert not figures.duplicate_keys, f"made again after the restart: {figures.duplicate_keys}"
    assert not figures.duplicate_created, f"KeyCreated twice: {figures.duplicate_created}"
    assert figures.audit_ok, figures.audit
    assert not figures.intents_left, f"intents the sweep left open: {figures.intents_left}"
    assert not figures.orphans, f"orphans left after the sweep: {figures.orphans}"


async def test_kill_9_mid_rotation_local_dev(tmp_path: Path, control_plane: ControlPlane,
                                            kube: KubeClient) -> None:
    figures = await crash_mid_rotation(control_plane, tmp_path, CRASH_KEYS)
    report(figures, "default run; 100 keys in bench/bench_reliability.py"
           if CRASH_KEYS < 100 else "")
    assert_clean(figures)


async def test_kill_9_mid_rotation_openbao(tmp_path: Path, control_plane: ControlPlane,
                                           kube: KubeClient,
                                           make_openbao_raft) -> None:  # noqa: F811
    """The same with keys in OpenBao transit (raft storage), the token read from the
    KeyPolicy's credentialsSecretRef."""
    vault = make_openbao_raft()
    figures = await crash_mid_rotation(control_plane, tmp_path, max(10, CRASH_KEYS // 2),
                                       provider="HASHICORP_VAULT", vault=vault)
    report(figures)
    assert_clean(figures)

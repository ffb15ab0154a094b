"""An operator replica serving the data plane from worker processes
(``QKMS_DATA_PLANE_WORKERS=2``, k8s/dataplane.py) on the real control plane: both workers
answer on the one port with real ServiceAccount tokens, each into its own audit chain
(anchored in qkms-audit-anchors); a rotation and a revocation made by the reconciler reach
every worker at once, through the Secret watch, with a catalog TTL of an hour; a worker
killed is started again; the pod's metrics count every process."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from qkms.audit.store import iter_log
from tests.k8s.conftest import qkms_operator_process
from tests.k8s.test_kube_auth import RBAC, role_binding, service_account
from tests.support.kubeclient import eventually

NS = "plane-workers"
KEY = "signer"
METRICS = "metrics-test-token"  # noqa: S105 - a test token for a loopback server


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (its data-plane workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def _entries(folder: Path) -> int:
    return sum(1 for _ in iter_log(folder)) if (folder / "segments").is_dir() else 0


async def _sign(url: str, token: str) -> tuple[int, dict]:
    """One SIGN on a connection of its own, so the kernel picks a worker each time."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.post(f"{url}/v1/keys/{NS}/{KEY}:sign",
                             json={"input": base64.b64encode(b"spread").decode()},
                             headers={"Authorization": f"Bearer {token}"}) as rsp:
            return rsp.status, await rsp.json(content_type=None)


@pytest.fixture
async def caller(kube, control_plane) -> str:
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": {"qkms.io/environment": "dev"}}})
    await kube.create("roles", {"apiVersion": RBAC, "kind": "Role",
                                "metadata": {"name": "signer", "namespace": NS},
                                "rules": [{"apiGroups": ["qkms.io"],
                                           "resources": ["managedkeys"], "verbs": ["sign"]}]},
                      NS)
    await role_binding(kube, NS, "app-signs", ("Role", "signer"), service_account(NS, "app"))
    return await control_plane.token(NS, "app", audiences=["qkms"])


async def test_workers_serve_one_port_and_see_rotation_and_revocation_at_once(
        kube, caller, operator_kubeconfig, tmp_path) -> None:
    operator = qkms_operator_process(operator_kubeconfig, tmp_path / "operator", {
        "QKMS_DATA_PLANE_WORKERS": "2", "QKMS_CATALOG_TTL_SECONDS": "3600",
        "QKMS_ANCHOR_SECONDS": "1", "QKMS_METRICS_TOKEN": METRICS})
    url = f"http://{operator.extra_env['QKMS_API_LISTEN']}"
    await operator.start()
    try:
        await kube.create("managedkeys", {
            "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": KEY, "namespace": NS},
            "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "payments"}}, NS)

        async def signed() -> dict | None:
            status, body = await _sign(url, caller)
            return body if status == 200 else None
        first = await eventually(signed, timeout=60, what="the key served by a worker",
                                 context=operator.log_tail)
        workers = _children(operator.pid)
        assert len(workers) == 2, workers
        audit = operator.cwd / "data" / "dev" / "audit"
        for _ in range(80):  # until the kernel has given connections to both workers
            status, body = await _sign(url, caller)
            assert status == 200, body
            if all(_entries(audit / w) for w in ("w1", "w2")):
                break
        assert all(_entries(audit / w) for w in ("w1", "w2")), operator.log_tail()
        print("FIGURE resident memory (MiB): operator", _rss(operator.pid),
              "workers", [_rss(pid) for pid in workers])
        secret = await kube.get("secrets", f"{KEY}-public", NS)
        if secret is not None:  # projected: check a worker's signature against it
            public = load_pem_public_key(base64.b64decode(secret["data"]["public.pem"]))
            public.verify(base64.b64decode(body["signature"]), b"spread")

        # A rotation by the reconciler: every worker signs with the new version at once.
        await kube.patch("managedkeys", KEY, {"metadata": {"annotations": {
            "qkms.io/rotate": "SCHEDULED"}}}, NS)

        async def rotated() -> bool:
            body = await kube.get("managedkeys", KEY, NS)
            return (body.get("status") or {}).get("keyId") not in (None, first["key_id"])
        await eventually(rotated, timeout=30, what="the rotation", context=operator.log_tail)
        current = (await kube.get("managedkeys", KEY, NS))["status"]["keyId"]
        answers = await asyncio.gather(*(_sign(url, caller) for _ in range(30)))
        assert {(s, b.get("key_id")) for s, b in answers} == {(200, current)}, answers[:3]

        # A revocation by the reconciler: refused by every worker at once (TTL: an hour).
        before = {w: _entries(audit / w) for w in ("w1", "w2")}
        await kube.patch("managedkeys", KEY, {"spec": {"revoked": {"reason": "leak"}}}, NS)

        async def revoked() -> bool:
            body = await kube.get("managedkeys", KEY, NS)
            return (body.get("status") or {}).get("phase") == "Revoked"
        await eventually(revoked, timeout=30, what="the revocation", context=operator.log_tail)
        answers = await asyncio.gather(*(_sign(url, caller) for _ in range(40)))
        assert {s for s, _ in answers} == {409}, answers[:3]
        after = {w: _entries(audit / w) for w in ("w1", "w2")}
        assert all(after[w] > before[w] for w in after), (before, after)  # both refused it

        # Each worker anchors its own chain's checkpoints in the cluster.
        async def anchored() -> bool:
            anchors = await kube.get("configmaps", "qkms-audit-anchors", "qkms-system")
            return {"dev.w1", "dev.w2"} <= set((anchors or {}).get("data") or {})
        await eventually(anchored, timeout=90, what="both workers' anchors",
                         context=operator.log_tail)

        # The pod's metrics sum every process: the refusals of both workers are counted.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/metrics/keys",
                                headers={"Authorization": f"Bearer {METRICS}"}) as rsp:
                assert rsp.status == 200
                text = await rsp.text()
        refused = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("qkms_operations_total{")
                      and 'operation="SIGN"' in line and 'result="success"' not in line)
        assert refused >= 40, text

        # A worker killed is started again; the port keeps answering.
        os.kill(workers[0], signal.SIGKILL)

        async def replaced() -> bool:
            now = _children(operator.pid)
            return len(now) == 2 and workers[0] not in now
        await eventually(replaced, timeout=30, what="the worker started again")
        answers = await asyncio.gather(*(_sign(url, caller) for _ in range(20)))
        assert {s for s, _ in answers} == {409}, answers[:3]
    finally:
        await operator.stop()
        print(f"--- operator ---\n{operator.log()}")
    assert _children(operator.pid or 0) == []  # the workers stopped with the operator

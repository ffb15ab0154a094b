"""Replicas on the real control plane: what the workload controllers make of manifests/ and
the chart, and the operator run as those pods (tests/install/pods.py).

- Two replicas: the StatefulSet controller gives each pod its own claim, each pod runs the
  real operator with the environment the API server gives it, and audited operations
  succeed on both (one audit log per replica, each verifiable). With the former Deployment
  both pods named one ReadWriteOnce claim and one audit folder, so the second replica's
  audited operations failed.
- Disruption: one replica can be drained (no PodDisruptionBudget blocks it), two keep one
  (the budget refuses the second eviction), through the real eviction API and disruption
  controller.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import helm_python as helm

from qkms.audit.verify import verify_folder
from qkms.crypto import verify_signature
from tests.install.helpers import CHART, NAMESPACE
from tests.install.pods import (
    APP_NS,
    SELECTOR,
    LocalPod,
    claim_of,
    key_user,
    kubectl_ok,
    mark_ready,
    pods_of,
    ready_key,
    signing_key,
    workload_control_plane,
)
from tests.support.kubeclient import KubeClient, KubeError, eventually


async def test_two_replicas_each_own_volume_and_audit_log(tmp_path: Path) -> None:
    async with workload_control_plane(tmp_path / "cp") as cp:
        kube = cp.client
        kubectl_ok(cp, "apply", "--server-side", "-f", "crds/", "-f", "manifests/")
        pods = await pods_of(kube, NAMESPACE, SELECTOR, 2)
        claims = [claim_of(pod) for pod in pods]
        assert len(set(claims)) == 2, f"the replicas share a volume: {claims}"
        for claim in claims:
            pvc = await kube.get("persistentvolumeclaims", claim, NAMESPACE)
            assert pvc is not None and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]

        await signing_key(kube)
        token = await key_user(cp)
        replicas = [LocalPod(cp, pod, tmp_path / "volumes", tmp_path / "pods") for pod in pods]
        try:
            for replica in replicas:
                await replica.start()
            await ready_key(kube, "signer")
            for replica in replicas:  # every replica serves the data plane, audited
                async with await replica.client(token) as client:
                    signed = await client.use_key(f"{APP_NS}/signer", "SIGN", b"hello")
                    assert await client.use_key(f"{APP_NS}/signer", "VERIFY", b"hello",
                                                signature=signed.signature)
            for replica in replicas:
                await replica.stop()  # a last signed checkpoint
            for replica, claim in zip(replicas, claims, strict=True):
                folder = tmp_path / "volumes" / claim / "dev" / "audit" / replica.name
                result = verify_folder(folder, check=verify_signature)
                assert result.ok, (folder, result.summary())
                assert result.entries >= 2, (folder, result.summary())
        finally:
            for replica in replicas:
                await replica.stop()
                print(f"--- {replica.name} ---\n{replica.log()[-6000:]}")


async def evict(kube: KubeClient, name: str) -> int:
    """The eviction API, as `kubectl drain` calls it: 201, or 429 when a budget forbids."""
    path = await kube.path("pods", NAMESPACE, name, "eviction")
    try:
        await kube.request("POST", path, body={
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": NAMESPACE}}, timeout=5)
    except KubeError as exc:
        return exc.status
    return 201


async def all_ready(kube: KubeClient, count: int) -> list[dict[str, Any]]:
    pods = await pods_of(kube, NAMESPACE, SELECTOR, count)
    for pod in pods:
        await mark_ready(kube, pod)
    return pods


async def test_drain_one_replica_and_keep_one_of_two(tmp_path: Path) -> None:
    async with workload_control_plane(tmp_path / "cp") as cp:
        kube = cp.client
        config = helm.Config(kubeconfig_path=cp.kubeconfig, namespace=NAMESPACE)

        def install(values: dict[str, Any]) -> Any:
            return config.install(CHART, "qkms", values, namespace=NAMESPACE,
                                  create_namespace=True, timeout=120)

        def upgrade(values: dict[str, Any]) -> Any:
            return config.upgrade(CHART, "qkms", values, namespace=NAMESPACE, timeout=120)

        await asyncio.to_thread(install, {"replicas": 1})
        (pod,) = await all_ready(kube, 1)
        assert await evict(kube, pod["metadata"]["name"]) == 201, "a single replica is undrainable"

        await asyncio.to_thread(upgrade, {"replicas": 2})
        pods = await all_ready(kube, 2)

        async def budget_allows(count: int) -> bool:
            pdb = await kube.get("policy/v1/poddisruptionbudgets", "qkms", NAMESPACE)
            status = (pdb or {}).get("status") or {}
            return status.get("currentHealthy") == 2 and \
                status.get("disruptionsAllowed") == count
        await eventually(lambda: budget_allows(1), timeout=30, what="the budget allows one")
        first, second = (p["metadata"]["name"] for p in pods)
        assert await evict(kube, first) == 201
        assert await evict(kube, second) == 429, "the budget let both replicas go"

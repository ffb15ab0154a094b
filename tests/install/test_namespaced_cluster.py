"""Namespace-scoped mode (the chart's watchNamespaces) on the real API server.

The chart is installed with ``watchNamespaces=[payments]``; the StatefulSet's first pod runs
the real operator as its ServiceAccount (tests/install/pods.py). A ManagedKey in payments
becomes Ready with its projection and serves the data plane; one in another namespace of the
same environment is never touched. The operator's own token cannot read Secrets outside
payments and its namespace, and the API server's audit log shows it was never refused:
it asked only for what its Roles grant.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import helm_python as helm

from tests.install.helpers import CHART, NAMESPACE
from tests.install.pods import (
    APP_NS,
    OPERATOR_USER,
    SELECTOR,
    LocalPod,
    audit_log,
    key_user,
    pods_of,
    ready_key,
    workload_control_plane,
)
from tests.support.kubeclient import KubeClient, KubeError

OTHER = "elsewhere"


async def key(kube: KubeClient, namespace: str, name: str) -> None:
    await kube.create("managedkeys", {
        "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "team",
                 "projection": {"secretName": f"{name}-public"}}}, namespace)


async def status(client: KubeClient, path: str) -> int:
    try:
        await client.request("GET", path)
    except KubeError as exc:
        return exc.status
    return 200


async def test_watch_namespaces_serves_only_those_with_roles_only(tmp_path: Path) -> None:
    async with workload_control_plane(tmp_path / "cp", audit_users=(OPERATOR_USER,)) as cp:
        kube = cp.client
        config = helm.Config(kubeconfig_path=cp.kubeconfig, namespace=NAMESPACE)

        def install() -> Any:
            return config.install(CHART, "qkms", {"watchNamespaces": [APP_NS]},
                                  namespace=NAMESPACE, create_namespace=True, timeout=120)

        for namespace in (APP_NS, OTHER):  # the listed namespaces exist before the install
            await kube.create("namespaces", {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {"qkms.io/environment": "dev"}}})
        assert (await asyncio.to_thread(install))["status"] == "deployed"
        await key(kube, APP_NS, "signer")
        await key(kube, OTHER, "ignored")
        token = await key_user(cp)

        (pod, _) = await pods_of(kube, NAMESPACE, SELECTOR, 2)
        replica = LocalPod(cp, pod, tmp_path / "volumes", tmp_path / "pods")
        try:
            await replica.start()
            await ready_key(kube, "signer")
            assert await kube.get("secrets", "signer-public", APP_NS) is not None
            async with await replica.client(token) as client:
                assert (await client.use_key(f"{APP_NS}/signer", "SIGN", b"scoped")).signature
            await asyncio.sleep(2)  # time enough for a cluster-wide operator to reach it
            ignored = await kube.get("managedkeys", "ignored", OTHER)
            assert "status" not in ignored and not ignored["metadata"].get("finalizers"), \
                ignored
            assert await kube.get("secrets", "ignored-public", OTHER) is None
        finally:
            await replica.stop()
            print(replica.log()[-6000:])

        refused = [(e["verb"], e["requestURI"]) for e in audit_log(cp)
                   if e.get("responseStatus", {}).get("code") == 403]
        assert refused == [], f"the operator asked beyond its Roles: {refused}"
        # And its token could not have: RBAC stops at the listed namespaces and its own.
        operator = cp.as_token(await cp.token(NAMESPACE, "qkms"))
        try:
            for path, expected in ((f"/api/v1/namespaces/{OTHER}/secrets", 403),
                                   ("/api/v1/secrets", 403),
                                   (f"/api/v1/namespaces/{APP_NS}/secrets", 200),
                                   (f"/api/v1/namespaces/{NAMESPACE}/secrets", 200)):
                assert await status(operator, path) == expected, path
        finally:
            await operator.close()

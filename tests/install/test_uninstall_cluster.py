"""`helm uninstall` and a reinstall keep every key, on the real API server.

The chart is installed as the README says (`helm install qkms ./helm/qkms -n qkms-system
--create-namespace`, default values) through helm-python-sdk; the StatefulSet controller
makes the pods and their audit claims, and each pod runs the real operator
(tests/install/pods.py) with QKMS_STATE=secrets: the keys live in Secrets of the operator's
namespace and each replica's audit chain on its claim. After `helm uninstall` and a second
install, the same key serves (same key ID, same public key, a signature made after the
reinstall verifies under the public key projected before it) and each replica's audit chain
continues where it stopped and verifies.

With a chart that owned the namespace, uninstall deleted it, and the namespace controller
deleted the master key, the sealed records and the claims with it.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import helm_python as helm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from qkms.audit.verify import verify_folder
from qkms.crypto import verify_signature
from tests.install.helpers import CHART, NAMESPACE
from tests.install.pods import (
    APP_NS,
    SELECTOR,
    LocalPod,
    claim_of,
    key_user,
    pods_of,
    ready_key,
    workload_control_plane,
)
from tests.support.controlplane import ControlPlane
from tests.support.kubeclient import KubeClient, eventually

KEY = "signer"


async def run_replicas(cp: ControlPlane, tmp_path: Path, run: str) -> list[LocalPod]:
    """The StatefulSet's pods, started as a kubelet would (claims are folders by name)."""
    pods = await pods_of(cp.client, NAMESPACE, SELECTOR, 2)
    replicas = [LocalPod(cp, pod, tmp_path / "volumes", tmp_path / run) for pod in pods]
    for replica in replicas:
        await replica.start()
    return replicas


async def stop(replicas: list[LocalPod]) -> None:
    for replica in replicas:
        await replica.stop()
        print(f"--- {replica.name} ---\n{replica.log()[-5000:]}")


async def sign_on_each(replicas: list[LocalPod], token: str, message: bytes) -> list[Any]:
    results = []
    for replica in replicas:
        async with await replica.client(token) as client:
            results.append(await client.use_key(f"{APP_NS}/{KEY}", "SIGN", message))
    return results


def chains(tmp_path: Path, replicas: list[LocalPod]) -> dict[str, Any]:
    found = {}
    for replica in replicas:
        folder = tmp_path / "volumes" / claim_of(replica.pod) / "dev" / "audit" / replica.name
        result = verify_folder(folder, check=verify_signature)
        assert result.ok, (folder, result.summary())
        found[replica.name] = result
    return found


async def key_secrets(kube: KubeClient) -> dict[str, str]:
    """The operator's Secrets that hold keys: name -> data digest of its contents."""
    secrets = await kube.list("secrets", NAMESPACE, labels="app.kubernetes.io/managed-by=qkms")
    return {s["metadata"]["name"]: repr(sorted((s.get("data") or {}).items()))
            for s in secrets}


async def test_uninstall_and_reinstall_keep_keys_and_audit_chains(tmp_path: Path) -> None:
    async with workload_control_plane(tmp_path / "cp") as cp:
        kube = cp.client
        config = helm.Config(kubeconfig_path=cp.kubeconfig, namespace=NAMESPACE)

        def install() -> Any:  # the README's command, default values
            return config.install(CHART, "qkms", namespace=NAMESPACE, create_namespace=True,
                                  timeout=120)

        assert (await asyncio.to_thread(install))["status"] == "deployed"
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": APP_NS,
                                                      "labels": {"qkms.io/environment": "dev"}}})
        await kube.create("managedkeys", {
            "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": KEY, "namespace": APP_NS},
            "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "checkout",
                     "projection": {"secretName": f"{KEY}-public"}}}, APP_NS)
        token = await key_user(cp)

        replicas = await run_replicas(cp, tmp_path, "first")
        try:
            before = (await ready_key(kube, KEY))["status"]
            projected = await kube.get("secrets", f"{KEY}-public", APP_NS)
            public = load_pem_public_key(base64.b64decode(projected["data"]["public.pem"]))
            await sign_on_each(replicas, token, b"before")
        finally:
            await stop(replicas)
        chains_before = chains(tmp_path, replicas)
        secrets_before = await key_secrets(kube)
        assert "qkms-master-key" in secrets_before
        assert any(name.startswith("qkms-rec-") for name in secrets_before)
        claims = sorted(claim_of(r.pod) for r in replicas)

        await asyncio.to_thread(config.uninstall, "qkms", timeout=120)

        async def pods_gone() -> bool:  # the garbage collector follows the StatefulSet
            return not await kube.list("pods", NAMESPACE, labels=SELECTOR)
        await eventually(pods_gone, timeout=60, what="the operator's pods deleted")
        assert await kube.get("statefulsets", "qkms", NAMESPACE) is None
        namespace = await kube.get("namespaces", NAMESPACE)
        assert namespace is not None and "deletionTimestamp" not in namespace["metadata"], \
            "helm uninstall deletes the namespace, and with it every key"
        assert await key_secrets(kube) == secrets_before
        for claim in claims:
            assert await kube.get("persistentvolumeclaims", claim, NAMESPACE) is not None

        assert (await asyncio.to_thread(install))["status"] == "deployed"
        replicas = await run_replicas(cp, tmp_path, "second")
        try:
            assert sorted(claim_of(r.pod) for r in replicas) == claims
            after = (await ready_key(kube, KEY))["status"]
            assert after["keyId"] == before["keyId"]
            projected = await kube.get("secrets", f"{KEY}-public", APP_NS)
            assert base64.b64decode(projected["data"]["public.pem"]) == \
                public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            for signed in await sign_on_each(replicas, token, b"after"):
                assert signed.key_id == before["keyId"]
                public.verify(signed.signature, b"after")  # the key from before the uninstall
        finally:
            await stop(replicas)
        for name, result in chains(tmp_path, replicas).items():
            earlier = chains_before[name]
            assert result.first_seq == earlier.first_seq, "a new chain, not the same one"
            assert result.last_seq > earlier.last_seq, "nothing appended after the reinstall"


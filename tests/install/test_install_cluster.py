"""The install paths against the real kube-apiserver: kubectl (server-side apply, and -k) with
the kubectl of the server's release, and Helm install, upgrade and uninstall through
helm-python-sdk. Nothing here needs a node: the server validates and admits every object
(a Deployment is accepted, and PodSecurity warns about its pod template if it would
violate the namespace's level); no pod is scheduled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import helm_python as helm
import pytest

from tests.install.helpers import CHART, NAMESPACE, manifest_objects
from tests.support.controlplane import ControlPlane
from tests.support.fixtures import running_control_plane
from tests.support.kubeclient import KubeClient


def kubectl_ok(cp: ControlPlane, *args: str) -> str:
    run = cp.kubectl(*args)
    assert run.returncode == 0, f"kubectl {' '.join(args)}:\n{run.stdout}\n{run.stderr}"
    assert "would violate PodSecurity" not in run.stderr, run.stderr
    return run.stdout


async def test_kubectl_server_side_apply_of_crds_and_manifests(control_plane, kube: KubeClient):
    out = kubectl_ok(control_plane, "apply", "--server-side", "--force-conflicts",
                     "-f", "crds/", "-f", "manifests/")
    for obj in manifest_objects():
        meta = obj["metadata"]
        resource = f"{obj['apiVersion']}/{obj['kind'].lower()}"  # discovery knows kinds
        assert await kube.get(resource, meta["name"], meta.get("namespace")), (obj["kind"], out)
    # What the server stored is what the manifest says (no field dropped by the schema).
    workload = next(o for o in manifest_objects() if o["kind"] in ("Deployment", "StatefulSet"))
    stored = await kube.get(f"apps/v1/{workload['kind'].lower()}", "qkms", NAMESPACE)
    assert stored["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


async def test_kubectl_apply_k_examples(control_plane, kube: KubeClient):
    kubectl_ok(control_plane, "apply", "-k", "examples/")
    names = {mk["metadata"]["name"] for mk in await kube.list("managedkeys")}
    assert {"user-service-signing", "storage-encryption", "release-signing"} <= names
    assert {kp["metadata"]["name"] for kp in await kube.list("keypolicies")} >= {"dev", "prod"}


@pytest.fixture(scope="module")
def helm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own, with nothing installed: Helm owns everything it makes."""
    with running_control_plane(tmp_path_factory.mktemp("helm-cluster"), base=False) as cp:
        yield cp


def test_helm_install_upgrade_uninstall(helm_cluster: ControlPlane):
    config = helm.Config(kubeconfig_path=helm_cluster.kubeconfig, namespace=NAMESPACE)
    release = config.install(CHART, "qkms", namespace=NAMESPACE, create_namespace=True,
                             timeout=120)
    assert release["status"] == "deployed", release

    kind = next(o["kind"] for o in manifest_objects() if o["kind"] in ("Deployment",
                                                                         "StatefulSet"))

    async def replicas() -> int:
        client = KubeClient(helm_cluster.url, ssl_context=helm_cluster.ssl_context(
            helm_cluster.pki.admin))
        try:
            workload = await client.get(f"apps/v1/{kind.lower()}", "qkms", NAMESPACE)
            return int(workload["spec"]["replicas"]) if workload else 0
        finally:
            await client.close()

    assert asyncio.run(replicas()) == 2
    upgraded = config.upgrade(CHART, "qkms", {"replicas": 3}, namespace=NAMESPACE, timeout=120)
    assert upgraded["revision"] == 2 and upgraded["status"] == "deployed", upgraded
    assert asyncio.run(replicas()) == 3
    config.uninstall("qkms", timeout=120)
    assert all(r["name"] != "qkms" for r in config.list() or [])

"""Fixtures every test folder may use (registered by ``pytest_plugins`` in tests/conftest.py).

- ``control_plane`` (session): the real etcd + kube-apiserver + kube-controller-manager
  (tests/support/controlplane.py) with qkms's CRDs, Kopf's peering CRD, the
  ``qkms-system`` namespace and the operator's ServiceAccount and RBAC from
  ``manifests/`` applied, as ``kubectl apply`` would.
- ``kube`` (per test): an admin client of that server. After the test, everything the
  test made is removed (ManagedKeys, KeyPolicies, namespaces, the operator's state in
  ``qkms-system``), so each test starts from a freshly installed cluster.
- ``make_kubo``: real kubo IPFS nodes, offline on 127.0.0.1 (tests/support/kubo.py).
- ``operator_kubeconfig``: a kubeconfig with a real token of ServiceAccount
  ``qkms-system/qkms``, so the operator under test has exactly the RBAC it ships.
- ``running_control_plane(folder)`` (sync) and ``private_control_plane(folder)`` (async):
  a control plane of one test or bench alone, for faults that stop or restart its servers
  (kube-apiserver, etcd) or loads that would disturb the session's.

A control plane that cannot be built or started fails the run under
``QKMS_REQUIRE_SERVERS=1`` (CI) and skips with the reason elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.controlplane import BUILD_SCRIPT, ControlPlane, ControlPlaneError, binaries
from tests.support.external_cluster import ExternalCluster
from tests.support.kubeclient import KubeClient, KubeError, eventually
from tests.support.kubo import make_kubo  # noqa: F401 - the kubo fixture, for every folder
from tests.support.servers import require_server

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "qkms-system"
BASE_MANIFESTS = ("00-namespace.yaml", "01-kopf-peering-crd.yaml", "02-serviceaccount.yaml",
                  "03-rbac.yaml")
SYSTEM_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease",
                               OPERATOR_NAMESPACE})


def documents(*paths: Path) -> list[dict[str, Any]]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


async def apply_all(client: KubeClient, docs: list[dict[str, Any]]) -> None:
    """Server-side apply in order, waiting for each CRD to be served before going on."""
    for doc in docs:
        await client.apply(doc)
        if doc["kind"] == "CustomResourceDefinition":
            name = doc["metadata"]["name"]

            async def established(name: str = name) -> bool:
                crd = await client.get("customresourcedefinitions", name)
                return any(c["type"] == "Established" and c["status"] == "True"
                           for c in ((crd or {}).get("status") or {}).get("conditions") or [])
            await eventually(established, timeout=30, what=f"CRD {name} established")


async def install_base(cp: ControlPlane) -> None:
    docs = documents(*sorted((ROOT / "crds").glob("*.yaml")),
                     *(ROOT / "manifests" / name for name in BASE_MANIFESTS))
    await apply_all(cp.client, docs)


async def reset(client: KubeClient, keep: frozenset[str] = SYSTEM_NAMESPACES) -> None:
    """Remove what a test made, so the next one starts from a fresh install; namespaces in
    `keep` stay (on a cluster the tests did not make, every one that was there before)."""
    for plural in ("managedkeys", "keypolicies"):
        for body in await client.list(plural):
            meta = body["metadata"]
            with contextlib.suppress(KubeError):
                await client.patch(plural, meta["name"], {"metadata": {"finalizers": None}},
                                   meta.get("namespace"))
                await client.delete(plural, meta["name"], meta.get("namespace"))
    for body in await client.list("clusterkopfpeerings"):
        with contextlib.suppress(KubeError):
            await client.delete("clusterkopfpeerings", body["metadata"]["name"])
    namespaces = [ns["metadata"]["name"] for ns in await client.list("namespaces")
                  if ns["metadata"]["name"] not in keep]
    for name in namespaces:
        with contextlib.suppress(KubeError):
            await client.delete("namespaces", name)
    for plural in ("secrets", "configmaps", "events"):
        for body in await client.list(plural, OPERATOR_NAMESPACE):
            name = body["metadata"]["name"]
            if name != "kube-root-ca.crt":
                with contextlib.suppress(KubeError):
                    await client.delete(plural, name, OPERATOR_NAMESPACE)

    async def gone() -> bool:
        left = {ns["metadata"]["name"] for ns in await client.list("namespaces")}
        return not left & set(namespaces)
    await eventually(gone, timeout=60, what=f"namespaces {namespaces} deleted")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane's binaries before the first test that needs them, outside any
    test's timeout: the first build takes many minutes (later runs find them cached)."""
    if any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("qkms: checking the Kubernetes control plane binaries "
                                "(tests/controlplane/build.sh; the first build takes ~15 min)")
        with contextlib.suppress(ControlPlaneError):  # the fixture reports it, per test
            binaries()
    if any(item.path.name == "test_cert_manager_controller.py" for item in session.items):
        # cert-manager's controllers (~1.5 min cold); the test reports a failed build.
        subprocess.run(["bash", str(BUILD_SCRIPT), "certmanager"], capture_output=True,
                       check=False)


async def _started(folder: Path, base: bool, kubeconfig: Path | None = None) -> ControlPlane:
    """A started control plane (with the base install unless `base` is false), or the
    test fails (CI) or skips with the reason, the servers' logs included. With
    `kubeconfig`, an existing cluster instead (tests/support/external_cluster.py)."""
    try:
        cp = ExternalCluster(kubeconfig, folder) if kubeconfig else ControlPlane(folder)
    except ControlPlaneError as exc:
        require_server("the Kubernetes control plane", str(exc))
    try:
        await cp.start()
        if base:
            await install_base(cp)
    except (ControlPlaneError, TimeoutError, KubeError, OSError) as exc:
        await cp.stop()
        require_server("the Kubernetes control plane", f"{exc}\n{cp.logs()}")
    return cp


@contextlib.contextmanager
def running_control_plane(folder: Path, *, base: bool = True,
                          kubeconfig: Path | None = None) -> Iterator[ControlPlane]:
    """Start a control plane (with the base install unless `base` is false) for the block.
    Sync, so that session- and module-scoped fixtures can use it outside any test's loop."""
    async def up() -> ControlPlane:
        cp = await _started(folder, base, kubeconfig)
        await cp.client.close()  # the admin client belongs to this loop
        return cp
    cp = asyncio.run(up())
    try:
        yield cp
    finally:
        asyncio.run(cp.stop())


@contextlib.asynccontextmanager
async def private_control_plane(folder: Path, *, base: bool = True
                                ) -> AsyncIterator[ControlPlane]:
    """The same, inside a running event loop: a control plane of one test (or bench) alone,
    which it may stop, restart or overload without disturbing the session's."""
    cp = await _started(folder, base)
    try:
        yield cp
    finally:
        await cp.stop()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The local control plane, or the cluster ``QKMS_TEST_KUBECONFIG`` names (kind, say)."""
    external = os.environ.get("QKMS_TEST_KUBECONFIG")
    with running_control_plane(tmp_path_factory.mktemp("controlplane"),
                               kubeconfig=Path(external) if external else None) as cp:
        yield cp


@pytest.fixture
async def kube(control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    """The admin client of the real API server; the cluster is reset after the test."""
    client = control_plane.client
    keep = SYSTEM_NAMESPACES
    if isinstance(control_plane, ExternalCluster):  # never delete what it held before
        keep |= {ns["metadata"]["name"] for ns in await client.list("namespaces")}
    try:
        yield client
    finally:
        try:
            await reset(client, keep)
        finally:
            await client.close()


@pytest.fixture
async def operator_kubeconfig(control_plane: ControlPlane, kube: KubeClient,
                              tmp_path: Path) -> Path:
    """Log in as the operator's own ServiceAccount (manifests/02 and 03), never as admin."""
    return await control_plane.service_account_kubeconfig(
        OPERATOR_NAMESPACE, "qkms", tmp_path / "operator.kubeconfig")

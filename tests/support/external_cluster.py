"""A cluster the tests did not start, given by ``QKMS_TEST_KUBECONFIG`` (kind, for example).

Where a Docker engine exists, ``kind create cluster --kubeconfig /tmp/kind.yaml`` (or
pytest-kind) gives a disposable cluster with nodes; ``QKMS_TEST_KUBECONFIG=/tmp/kind.yaml
python -m pytest tests/k8s tests/install`` then runs the session's Kubernetes tests
against it instead of the local control plane. It offers what those tests use of
:class:`~tests.support.controlplane.ControlPlane` (an admin client, TokenRequest tokens,
ServiceAccount kubeconfigs, kubectl); what only a control plane the tests own can give
(its ServiceAccount signing key, stopping its servers) is absent, and the tests that need
it say so. The kubeconfig's current context must be a cluster admin.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from tests.support.controlplane import ROOT, ControlPlane, ControlPlaneError
from tests.support.kubeclient import KubeClient


def _material(entry: dict[str, Any], key: str, folder: Path, name: str) -> Path | None:
    """A kubeconfig field as a file: ``key`` is a path, ``key-data`` inline base64."""
    if entry.get(f"{key}-data"):
        path = folder / name
        path.write_bytes(base64.b64decode(entry[f"{key}-data"]))
        path.chmod(0o600)
        return path
    return Path(entry[key]) if entry.get(key) else None


class ExternalCluster(ControlPlane):
    """The ControlPlane interface over an existing cluster's admin kubeconfig."""

    def __init__(self, kubeconfig: Path, workdir: Path) -> None:  # noqa: D107 - no servers
        workdir.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c["context"] for c in config["contexts"]
                       if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"]
                       if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        ca = _material(cluster, "certificate-authority", workdir, "ca.crt")
        if ca is None:
            raise ControlPlaneError(f"{kubeconfig}: the cluster has no certificate-authority")
        cert = _material(user, "client-certificate", workdir, "admin.crt")
        key = _material(user, "client-key", workdir, "admin.key")
        self.workdir = workdir
        self.url = str(cluster["server"]).rstrip("/")
        self.kubeconfig = kubeconfig
        self.admin_token = user.get("token")
        self.pki = SimpleNamespace(ca_path=ca, admin=(cert, key) if cert and key else None,
                                   sa_key_path=None)  # the cluster's signing key is not ours
        self._admin = None
        self._admin_loop = None

    @property
    def client(self) -> KubeClient:
        if self.admin_token:
            return KubeClient(self.url, ssl_context=self.ssl_context(), token=self.admin_token)
        return super().client

    async def start(self, timeout: float = 90.0) -> None:
        await self.client.request("GET", "/readyz", timeout=timeout)

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    def logs(self) -> str:
        return f"(an external cluster at {self.url}: its logs are its own)"

    def kubectl(self, *args: str, kubeconfig: Path | None = None,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        found = shutil.which("kubectl")
        if found is None:
            raise ControlPlaneError("kubectl is not on PATH")
        return subprocess.run([found, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
                              capture_output=True, text=True, input=input, check=False,
                              timeout=120, cwd=ROOT)

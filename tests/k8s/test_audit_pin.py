"""``qkms audit verify --anchor kube:KUBECONFIG``: the checkpoint key the operator pinned in
the real cluster's ConfigMap decides whether a log was rebuilt under another key."""

from __future__ import annotations

import base64
import subprocess
import sys

from tests.audit.helpers import AuditKey, filled

PINS = {"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "qkms-audit-pins", "namespace": "qkms-system"}}


def verify(folder, kubeconfig) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qkms", "audit", "verify", "--data-dir",
                           str(folder), "--anchor", f"kube:{kubeconfig}"],
                          capture_output=True, text=True, check=False, timeout=120)


async def test_the_cluster_pin_decides(kube, control_plane, tmp_path):
    folder = tmp_path / "audit"
    await filled(folder, 12, signer=AuditKey(), checkpoint_every=5)
    environment = "dev"
    unpinned = verify(folder, control_plane.kubeconfig)
    assert unpinned.returncode == 1 and "unanchored" in unpinned.stdout, unpinned.stdout
    await kube.create("configmaps", {**PINS, "data": {
        environment: base64.b64encode(AuditKey().public).decode()}}, "qkms-system")
    good = verify(folder, control_plane.kubeconfig)
    assert good.returncode == 0, good.stdout + good.stderr
    await kube.patch("configmaps", "qkms-audit-pins", {"data": {
        environment: base64.b64encode(AuditKey("intruder").public).decode()}}, "qkms-system")
    rebuilt = verify(folder, control_plane.kubeconfig)
    assert rebuilt.returncode == 1 and "key-changed" in rebuilt.stdout, rebuilt.stdout

"""Issue 14, item 3, in a cluster: the operator publishes its audit writer's latest checkpoint
in ConfigMap qkms-system/qkms-audit-anchors, and ``qkms audit verify --anchor kube:...``
catches the replica's log cut back to an earlier checkpoint (truncated), or rebuilt and
re-signed under a fresh key (forked), though every signature in it still holds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from qkms.audit.anchors import parse_anchors
from qkms.audit.verify import verify_folder
from qkms.crypto import verify_signature
from tests.audit.helpers import AuditKey, filled
from tests.audit.test_audit_ipfs import cut_back_to
from tests.k8s.test_operator_e2e import ready
from tests.support.kubeclient import eventually

WRITER = "qkms-0"
NS = "payments"


def verify(folder: Path, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qkms", "audit", "verify", "--data-dir",
                           str(folder), "--anchor", f"kube:{kubeconfig}"],
                          capture_output=True, text=True, check=False, timeout=120)


async def published(kube, above: int = 0) -> int:
    """The size of the writer's published checkpoint, once it is past `above`."""
    async def probe() -> int | None:
        found = await kube.get("configmaps", "qkms-audit-anchors", "qkms-system") or {}
        line = (found.get("data") or {}).get(f"dev.{WRITER}")
        size = parse_anchors(line, "anchors")[0].size if line else 0
        return size if size > above else None
    return await eventually(probe, timeout=60, what=f"a checkpoint past {above} published")


async def key(kube, name: str) -> None:
    await kube.create("managedkeys", {
        "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "team"}}, NS)
    await ready(kube, name)


async def test_a_cut_or_rebuilt_replica_log_is_caught_by_its_published_checkpoint(
        kube, control_plane, operator_kubeconfig, tmp_path):
    from tests.k8s.conftest import qkms_operator_process

    operator = qkms_operator_process(operator_kubeconfig, tmp_path / "operator", {
        "QKMS_AUDIT_WRITER": WRITER, "QKMS_ANCHOR_SECONDS": "1",
        "QKMS_AUDIT_CHECKPOINT_SECONDS": "1"})
    try:
        await operator.start()
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": NS, "labels": {
                                             "qkms.io/environment": "dev"}}})
        await key(kube, "first")
        earlier = await published(kube)
        await key(kube, "second")
        await published(kube, above=earlier)
    finally:
        await operator.stop()
        print(operator.log())
    folder = operator.cwd / "data" / "dev" / "audit" / WRITER
    assert (folder / "segments").is_dir(), sorted(p.name for p in folder.parent.iterdir())
    latest = await published(kube)
    good = verify(folder, control_plane.kubeconfig)
    assert good.returncode == 0, good.stdout + good.stderr

    backup = tmp_path / "backup"
    shutil.copytree(folder, backup)
    cut_back_to(folder, earlier)
    assert verify_folder(folder, check=verify_signature).ok  # the attack: signatures hold
    cut = verify(folder, control_plane.kubeconfig)
    assert cut.returncode == 1 and "truncated" in cut.stdout, cut.stdout + cut.stderr
    assert f"writer {WRITER}" in cut.stdout and f"ends at {earlier}" in cut.stdout

    shutil.rmtree(folder)
    await filled(folder, latest + 3, signer=AuditKey("intruder"), checkpoint_every=latest + 3)
    assert verify_folder(folder, check=verify_signature).ok  # trusted on first use
    forged = verify(folder, control_plane.kubeconfig)
    assert forged.returncode == 1 and "forked" in forged.stdout, forged.stdout + forged.stderr

    # Another writer's chain beside this one that its writer never published: verify reads
    # every writer's chain of the environment, and names the stray one.
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)
    assert verify(folder, control_plane.kubeconfig).returncode == 0
    shutil.copytree(backup, folder.parent / "qkms-9")
    stray = verify(folder, control_plane.kubeconfig)
    assert stray.returncode == 1 and "unanchored" in stray.stdout, stray.stdout
    assert "writer qkms-9" in stray.stdout

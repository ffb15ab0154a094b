"""cert-manager for the tests: its CRDs and its own controllers, at the release that
tests/controlplane/certmanager pins.

- ``cert_manager_crds``: the cert-manager.io CRDs from the release's Go module (downloaded
  into a cache outside the clone);
- ``controller_binary``: its controllers, built (or found cached) by build.sh, or
  ``QKMS_CERT_MANAGER_BIN``;
- ``running_controllers``: those controllers as a process against a test control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from .controlplane import BUILD_SCRIPT, stop_process
from .server_process import die_with_parent
from .servers import require_server

CERT_MANAGER = "github.com/cert-manager/cert-manager"
MODULE = Path(__file__).resolve().parents[1] / "controlplane" / "certmanager"
VERSION = os.environ.get("QKMS_CERT_MANAGER_VERSION") or next(
    line.split()[-1] for line in (MODULE / "go.mod").read_text().splitlines()
    if line.split()[:1] == [CERT_MANAGER] or line.split()[:2] == ["require", CERT_MANAGER])
GO_CACHE = Path(os.environ.get("QKMS_GOMODCACHE", Path.home() / ".cache" / "qkms-gomod"))


def cert_manager_crds(plurals: tuple[str, ...] = ("certificaterequests",)
                      ) -> list[dict[str, Any]]:
    """cert-manager.io CRDs (by plural) from deploy/crds of the pinned release."""
    go = shutil.which("go")
    if go is None:
        require_server("cert-manager's CRDs", "no go toolchain to download its module")
    env = {**os.environ, "GOMODCACHE": str(GO_CACHE), "GOFLAGS": "-mod=mod"}
    module = f"{CERT_MANAGER}@{VERSION}"
    done = subprocess.run([go, "mod", "download", "-json", module],
                          capture_output=True, text=True, env=env, timeout=300, cwd="/")
    if done.returncode != 0:
        require_server("cert-manager's CRDs", f"go mod download failed: {done.stdout}{done.stderr}")
    folder = Path(json.loads(done.stdout)["Dir"]) / "deploy" / "crds"
    crds = []
    for plural in plurals:
        # controller-gen's names since 1.18; crd-<plural>.yaml (a Helm template) before.
        path = next((p for p in (folder / f"cert-manager.io_{plural}.yaml",
                                 folder / f"crd-{plural}.yaml") if p.exists()), None)
        assert path, f"cert-manager {VERSION} has no CRD for {plural} in {folder}"
        crd = yaml.safe_load(path.read_text())
        # Helm template values in labels and annotations: replaced by what an install would
        # write.
        crd["metadata"]["labels"] = {"app.kubernetes.io/name": "cert-manager"}
        crd["metadata"].pop("annotations", None)
        assert crd["spec"]["names"]["plural"] == plural
        crds.append(crd)
    return crds


def controller_binary() -> Path:
    """cert-manager's controllers (build.sh certmanager, cached), or QKMS_CERT_MANAGER_BIN."""
    if path := os.environ.get("QKMS_CERT_MANAGER_BIN"):
        binary = Path(path)
    else:
        run = subprocess.run(["bash", str(BUILD_SCRIPT), "certmanager"], capture_output=True,
                             text=True, check=False)
        if run.returncode != 0:
            require_server("cert-manager's controller",
                           f"build.sh certmanager failed (needs Go 1.26):\n{run.stderr[-2000:]}")
        binary = Path(run.stdout.split()[-1]) / "cert-manager-controller"
    if not os.access(binary, os.X_OK):
        require_server("cert-manager's controller", f"not executable: {binary}")
    return binary


@contextlib.asynccontextmanager
async def running_controllers(kubeconfig: Path, namespace: str, controllers: Sequence[str],
                              log_path: Path, *args: str) -> AsyncIterator[subprocess.Popen]:
    """cert-manager's `controllers` watching `namespace`; their log is printed (its end)
    when they stop, so a failing test shows what cert-manager did."""
    binary = controller_binary()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(binary), f"--kubeconfig={kubeconfig}", f"--namespace={namespace}",
             f"--controllers={','.join(controllers)}", "--v=2", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent)
    try:
        await asyncio.sleep(1)
        assert proc.poll() is None, log_path.read_text(errors="replace")
        yield proc
    finally:
        await stop_process(proc)
        print(f"--- cert-manager {VERSION} ---\n{log_path.read_text(errors='replace')[-20000:]}")

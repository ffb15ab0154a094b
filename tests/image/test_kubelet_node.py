"""The pod of manifests/ on a real node: the upstream kubelet of the control plane's release
with Debian's containerd and runc (tests/image/node.py says what these VMs need).

The kubelet runs the StatefulSet's pod template from the image built by tests/image/build.sh:
the init container makes the ClusterKopfPeering, the container runs as 10001 and the
kubelet's readiness probe on /healthz passes, and the operator reconciles a dev key.

``.ci/run`` runs it (QKMS_KUBELET_NODE=1, containerd from Debian, ``build.sh kubelet
pause``); elsewhere it is opt-in, since it needs root, cgroups, overlayfs and a few minutes
to move the image into containerd, more than the podman run (test_image.py) that covers the
image in every run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.image.node import Node, pod_of_template
from tests.image.podman import build_image
from tests.install.helpers import NAMESPACE
from tests.install.pods import APP_NS, kubectl_ok, ready_key, workload_control_plane
from tests.support.kubeclient import eventually

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(3600),
              pytest.mark.skipif(os.environ.get("QKMS_KUBELET_NODE") != "1",
                                 reason="opt-in: QKMS_KUBELET_NODE=1 runs the kubelet node")]


async def test_the_kubelet_runs_the_pod_of_manifests(tmp_path):
    image, _ = build_image()
    manifests = sorted(str(p) for p in (ROOT / "manifests").glob("0*.yaml")
                       if "statefulset" not in p.name)  # the Pod is made below, bound to the node
    async with workload_control_plane(tmp_path / "cp") as cp:
        kube = cp.client
        kubectl_ok(cp, "apply", "--server-side", "-f", "crds/",
                   *[arg for path in manifests for arg in ("-f", path)])
        # No CNI here: a hostNetwork pod, which the namespace's "restricted" level refuses.
        kubectl_ok(cp, "label", "namespace", NAMESPACE, "--overwrite",
                   "pod-security.kubernetes.io/enforce=privileged")
        node = Node(cp, tmp_path / "node")
        try:
            await node.start_containerd()
            node.import_images(image)
            await node.start_kubelet()
            statefulset = yaml.safe_load((ROOT / "manifests" / "05-statefulset.yaml").read_text())
            pod = pod_of_template(statefulset, image, cp.port)
            await kube.create("pods", pod, NAMESPACE)
            name = pod["metadata"]["name"]

            async def ready() -> bool:
                body = await kube.get("pods", name, NAMESPACE)
                conditions = {c["type"]: c["status"]
                              for c in (body.get("status") or {}).get("conditions", [])}
                return conditions.get("Ready") == "True"
            await eventually(ready, timeout=300, what=f"pod {name} Ready on the kubelet",
                             context=lambda: node.log("kubelet") + node.log("containerd"))

            assert await kube.get("kopf.dev/v1/clusterkopfpeerings", "qkms") is not None
            assert node.container_uid("qkms") == 10001
            kubectl_ok(cp, "apply", "-f", "examples/namespaces.yaml",
                       "-f", "examples/keypolicy-dev.yaml",
                       "-f", "examples/managedkey-ed25519-signing.yaml")
            body = await ready_key(kube, "user-service-signing", APP_NS, timeout=120)
            assert body["status"]["provider"] == "LOCAL_DEV"
        finally:
            await node.stop()

"""The image, built from the Dockerfile (tests/image/build.sh: buildah, a debootstrap base
where no registry is reachable) and run with podman against the real API server.

- The StatefulSet controller makes the pod from manifests/; its init container and its
  container run from the image with that pod's environment, ServiceAccount token and
  securityContext (tests/image/podman.py): the operator runs as 10001 on a read-only root
  filesystem, /healthz answers, it reconciles examples/ (the dev policy, LOCAL_DEV) and
  serves the data plane; `qkms version` inside is the package's version.
- Every provider's SDK is in the image, and SoftHSM2 at HSM_LIBRARY holds a real key.

Without podman, buildah or debootstrap the tests skip with the apt command (and fail under
QKMS_REQUIRE_SERVERS=1, as CI runs them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.image.podman import PodmanPod, build_image, podman, run_flags
from tests.install.helpers import NAMESPACE
from tests.install.pods import (
    APP_NS,
    SELECTOR,
    key_user,
    kubectl_ok,
    pods_of,
    ready_key,
    workload_control_plane,
)

ROOT = Path(__file__).resolve().parents[2]
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
EXAMPLE_KEYS = ("user-service-signing", "storage-encryption", "secure-service-signing",
                "secure-service-kem", "release-signing")
pytestmark = pytest.mark.timeout(3600)  # a cold build: debootstrap, pip, apt


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    name, summary = build_image()
    print(summary)  # the image size and the build time, in the test's output
    yield name


async def apply_examples(kube) -> None:
    paths = sorted((ROOT / "examples").glob("*.yaml"), key=lambda p: p.name != "namespaces.yaml")
    plural = {"Namespace": "namespaces", "KeyPolicy": "keypolicies", "ManagedKey": "managedkeys"}
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            await kube.create(plural[doc["kind"]], doc, doc["metadata"].get("namespace"))


async def test_the_image_runs_the_pod_of_manifests_against_the_api_server(image, tmp_path):
    async with workload_control_plane(tmp_path / "cp") as cp:
        kube = cp.client
        kubectl_ok(cp, "apply", "--server-side", "-f", "crds/", "-f", "manifests/")
        (pod, _) = await pods_of(kube, NAMESPACE, SELECTOR, 2)
        replica = PodmanPod(cp, pod, tmp_path / "volumes", tmp_path / "pods", image)
        try:
            await replica.start()  # the init container made the ClusterKopfPeering
            assert await kube.get("kopf.dev/v1/clusterkopfpeerings", "qkms") is not None

            uid = await replica.exec("id", "-u")
            assert uid.stdout.strip() == "10001", uid
            written = await replica.exec("touch", "/opt/qkms/written")
            assert written.returncode != 0 and "Read-only file system" in written.stderr
            version = await replica.exec("qkms", "version")
            assert version.stdout.split()[-1] == VERSION, version

            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{replica.named_ports['health']}/healthz"
                async with session.get(url) as rsp:
                    assert rsp.status == 200, await rsp.text()

            await apply_examples(kube)
            for name in EXAMPLE_KEYS:
                body = await ready_key(kube, name, timeout=90)
                assert body["status"]["provider"] == "LOCAL_DEV"
            token = await key_user(cp)
            async with await replica.client(token) as client:
                signed = await client.use_key(f"{APP_NS}/user-service-signing", "SIGN",
                                              b"from the image")
                assert await client.use_key(f"{APP_NS}/user-service-signing", "VERIFY",
                                            b"from the image", signature=signed.signature)
            audit = tmp_path / "volumes" / f"audit-{replica.name}" / "dev" / "audit" / \
                replica.name
            assert (audit / "segments").is_dir(), "no audit log on the pod's own volume"
        finally:
            await replica.stop()
            print(replica.log()[-8000:])
            await replica.remove()


def test_every_provider_sdk_and_softhsm_in_the_image(image, tmp_path):
    imports = podman("run", "--rm", *run_flags(), "--entrypoint", "python", image, "-c",
                     "import kopf, kubernetes, hvac, boto3, azure.keyvault.keys, "
                     "azure.identity, pkcs11; print('ok')")
    assert imports.stdout.strip() == "ok", imports
    data = tmp_path / "data"
    data.mkdir()
    import os
    os.chown(data, 10001, 10001)
    script = ("set -e; mkdir -p /var/lib/qkms/softhsm/tokens; "
              "softhsm2-util --init-token --free --label qkms --pin 1234 --so-pin 5678 "
              "> /dev/null; HSM_PIN=1234 HSM_TOKEN_LABEL=qkms qkms --provider HSM keys create "
              "--usage SIGNING --algorithm ECDSA-P256 --owner image --name in-the-hsm")
    created = podman("run", "--rm", *run_flags(), "-v", f"{data}:/var/lib/qkms",
                     "--tmpfs", "/tmp", "--entrypoint", "sh", image, "-c", script)
    key = yaml.safe_load(created.stdout)
    assert key["provider"] == "HSM" and key["name"] == "in-the-hsm", created.stdout
    assert any((data / "softhsm" / "tokens").iterdir()), "the token lives on the volume"

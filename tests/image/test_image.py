"""The image, built from the Dockerfile (tests/image/build.sh: buildah, a debootstrap base
where no registry is reachable) and run with podman against the real API server.

- The StatefulSet controller makes the pod from manifests/; its init container and its
  container run from the image with that pod's environment, ServiceAccount token and
  securityContext (tests/image/podman.py): the operator runs as 10001 on a read-only root
  filesystem, /healthz answers, it reconciles examples/ (the dev policy on LOCAL_DEV; the
  staging policy on an OpenBao dev server the test starts on 127.0.0.1, its token in the
  Secret the policy's credentialsSecretRef names, as a user would give it) and serves the
  data plane; `qkms version` inside is the package's version.
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
from tests.support.openbao import OpenBao, openbao_server  # noqa: F401 - fixture

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


# examples/ has no staging key (`qkms serve` serves examples/ without a Vault): the test
# adds one in examples' staging namespace.
STAGING_KEY = {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
               "metadata": {"name": "checkout-signing", "namespace": "checkout-staging"},
               "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "checkout"}}


async def apply_examples(kube, vault: OpenBao) -> None:
    """examples/ as they are, but for the staging policy's Vault address (the test's
    OpenBao); its token goes in the Secret the policy names, in the operator's namespace."""
    staging = yaml.safe_load((ROOT / "examples" / "keypolicy-staging.yaml").read_text())
    ref = staging["spec"]["provider"]["credentialsSecretRef"]
    await kube.create("secrets", {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": ref["name"], "namespace": ref["namespace"]},
        "stringData": {"token": vault.token}}, ref["namespace"])
    paths = sorted((ROOT / "examples").glob("*.yaml"), key=lambda p: p.name != "namespaces.yaml")
    plural = {"Namespace": "namespaces", "KeyPolicy": "keypolicies", "ManagedKey": "managedkeys"}
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "KeyPolicy" and doc["spec"]["environment"] == "staging":
                doc["spec"]["provider"]["settings"]["address"] = vault.address
            await kube.create(plural[doc["kind"]], doc, doc["metadata"].get("namespace"))
    await kube.create("managedkeys", STAGING_KEY, STAGING_KEY["metadata"]["namespace"])


async def test_the_image_runs_the_pod_of_manifests_against_the_api_server(
        image, tmp_path, openbao_server):  # noqa: F811 - the fixture
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

            await apply_examples(kube, openbao_server)
            for name in EXAMPLE_KEYS:
                body = await ready_key(kube, name, timeout=90)
                assert body["status"]["provider"] == "LOCAL_DEV"
            staging = await ready_key(kube, STAGING_KEY["metadata"]["name"],
                                      STAGING_KEY["metadata"]["namespace"], timeout=90)
            assert staging["status"]["provider"] == "HASHICORP_VAULT", staging["status"]
            transit = openbao_server.client().read(f"transit/keys/{staging['status']['keyId']}")
            assert transit and transit["data"]["type"] == "ed25519", \
                "the staging key is not a transit key in OpenBao"
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

"""The data plane in a cluster: HTTPS by default, audience-bound tokens, on the real API server.

manifests/ is applied with kubectl; the StatefulSet's first pod runs the real operator
(tests/install/pods.py) with the environment the API server gives it (QKMS_TLS=auto,
QKMS_AUDIENCES=qkms). The operator makes its CA and serving certificate (Secret qkms-tls)
and publishes the CA (ConfigMap qkms-ca) where its keys are; a workload that projects a
token for the audience ``qkms`` and that CA signs, through QkmsClient and `qkms call`
reading the projected paths. A token for the API server (the default ServiceAccount token)
is refused, plain HTTP gets nowhere, and the client will not send a token in the clear.
The certificate's files in the pod's /tmp go when the operator stops.
Standalone, `qkms serve` refuses plain HTTP off loopback.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from qkms.client import QkmsClient
from qkms.errors import InvalidInputError, QkmsError
from tests.install.helpers import NAMESPACE, ROOT
from tests.install.pods import (
    APP_NS,
    SELECTOR,
    LocalPod,
    key_user,
    kubectl_ok,
    pods_of,
    ready_key,
    workload_control_plane,
)
from tests.support.server_process import free_port


async def test_data_plane_is_https_with_audience_bound_tokens(tmp_path: Path) -> None:
    async with workload_control_plane(tmp_path / "cp") as cp:
        kube = cp.client
        kubectl_ok(cp, "apply", "--server-side", "-f", "crds/", "-f", "manifests/")
        await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": APP_NS,
                                                      "labels": {"qkms.io/environment": "dev"}}})
        await kube.create("managedkeys", {
            "apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": "signer", "namespace": APP_NS},
            "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "checkout",
                     "projection": {"secretName": "signer-public"}}}, APP_NS)
        token = await key_user(cp)
        (pod, _) = await pods_of(kube, NAMESPACE, SELECTOR, 2)
        replica = LocalPod(cp, pod, tmp_path / "volumes", tmp_path / "pods")
        try:
            await replica.start()
            await ready_key(kube, "signer")
            secret = await kube.get("secrets", "qkms-tls", NAMESPACE)
            assert secret is not None and secret["type"] == "kubernetes.io/tls"
            ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
            for namespace in (NAMESPACE, APP_NS):  # where workloads project it from
                published = await kube.get("configmaps", "qkms-ca", namespace)
                assert published is not None and published["data"]["ca.crt"] == ca, namespace

            # A workload's projected volume: a token for the audience qkms, and the CA.
            projected = tmp_path / "projected"
            projected.mkdir()
            (projected / "token").write_text(token)
            (projected / "ca.crt").write_text(ca)
            assert replica.api_url.startswith("https://")
            pod_tmp = replica.mounts["tmp"]  # the pod's /tmp, an emptyDir: kept on restart
            assert len(list(pod_tmp.glob("qkms-tls-*"))) == 1  # the serving key's files
            os.environ["QKMS_TOKEN_FILE"] = str(projected / "token")
            os.environ["QKMS_CA_FILE"] = str(projected / "ca.crt")
            try:
                async with QkmsClient(replica.api_url) as client:  # the defaults: projected
                    signed = await client.use_key(f"{APP_NS}/signer", "SIGN", b"over tls")
            finally:
                del os.environ["QKMS_TOKEN_FILE"], os.environ["QKMS_CA_FILE"]
            public = (await kube.get("secrets", "signer-public", APP_NS))["data"]["public.pem"]
            load_pem_public_key(base64.b64decode(public)).verify(signed.signature, b"over tls")

            # `qkms call` from the same projected files.
            (tmp_path / "message").write_bytes(b"from qkms call")
            env = {**os.environ, "QKMS_URL": replica.api_url,
                   "QKMS_TOKEN_FILE": str(projected / "token"),
                   "QKMS_CA_FILE": str(projected / "ca.crt"),
                   "PYTHONPATH": str(ROOT / "operator")}
            called = subprocess.run([sys.executable, "-m", "qkms", "call", "sign",
                                     f"{APP_NS}/signer", "--in", str(tmp_path / "message")],
                                    env=env, capture_output=True, text=True, timeout=60)
            assert called.returncode == 0, called.stderr
            load_pem_public_key(base64.b64decode(public)).verify(
                base64.b64decode(called.stdout.strip()), b"from qkms call")

            # A token minted for the API server (what a pod mounts by default): refused.
            api_token = await cp.token(APP_NS, "checkout")
            async with QkmsClient(replica.api_url, token=api_token,
                                  ca_file=projected / "ca.crt") as client:
                with pytest.raises(QkmsError) as refused:
                    await client.use_key(f"{APP_NS}/signer", "SIGN", b"wrong audience")
            assert getattr(refused.value, "status", None) == 401, refused.value

            # Plain HTTP reaches nothing, and the client sends no token in the clear.
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientError):
                    await session.get(f"http://127.0.0.1:{replica.named_ports['api']}/healthz")
            with pytest.raises(InvalidInputError, match="plain HTTP only to loopback"):
                QkmsClient("http://qkms.qkms-system:8443", token=token)
        finally:
            await replica.stop()
            print(replica.log()[-6000:])
        assert not list(pod_tmp.glob("qkms-tls-*")), "the key's files outlived the operator"


def test_standalone_serves_plain_http_only_on_loopback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"),
           "QKMS_DATA_DIR": str(tmp_path / "data")}
    refused = subprocess.run([sys.executable, "-m", "qkms", "serve", "--listen",
                              f"0.0.0.0:{free_port()}"], env=env, capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)
    assert refused.returncode == 2 and "plain HTTP only on loopback" in refused.stderr, \
        refused.stderr
    assert not (tmp_path / "data").exists(), "keys were made before the refusal"

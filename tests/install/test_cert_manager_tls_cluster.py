"""The data plane's certificate from cert-manager (the chart's dataPlane.certManager), end to
end on the real API server with cert-manager's own controllers.

The chart is installed with Helm (helm-python-sdk) with ``dataPlane.certManager.issuerRef``
naming a CA Issuer; the CA itself is a cert-manager Certificate from a SelfSigned Issuer.
cert-manager v1.21.2's controllers (tests/controlplane/certmanager: the issuers controller,
the SelfSigned and CA signers, the certificates controllers and the approver) issue the
chart's Certificate into the Secret the StatefulSet mounts. The StatefulSet's first pod runs
the real operator (tests/install/pods.py: the Secret volume written as the kubelet would);
it serves HTTPS with that certificate, and a workload that trusts only the CA, and checks
the Service's DNS name, signs with a key. A client that trusts another CA is refused.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path

import aiohttp
import helm_python as helm
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.install.helpers import CHART, NAMESPACE
from tests.install.pods import (
    APP_NS,
    SELECTOR,
    LocalPod,
    key_user,
    pods_of,
    ready_key,
    signing_key,
    workload_control_plane,
)
from tests.support.cert_manager import cert_manager_crds, running_controllers
from tests.support.fixtures import apply_all
from tests.support.kubeclient import eventually

# What a Certificate from a CA Issuer needs (cert-manager's names for its controllers).
CONTROLLERS = ("issuers", "certificaterequests-issuer-selfsigned",
               "certificaterequests-issuer-ca", "certificaterequests-approver",
               "certificates-trigger", "certificates-key-manager",
               "certificates-request-manager", "certificates-issuing",
               "certificates-readiness", "certificates-revision-manager")
SERVICE_NAME = f"qkms.{NAMESPACE}.svc"
CM = "cert-manager.io/v1"


def cert_manager_objects() -> list[dict]:
    """A SelfSigned Issuer, the CA Certificate it signs, and the CA Issuer of the chart."""
    meta = {"namespace": NAMESPACE}
    return [
        {"apiVersion": CM, "kind": "Issuer", "metadata": {**meta, "name": "bootstrap"},
         "spec": {"selfSigned": {}}},
        {"apiVersion": CM, "kind": "Certificate", "metadata": {**meta, "name": "platform-ca"},
         "spec": {"isCA": True, "commonName": "platform test CA", "secretName": "platform-ca",
                  "privateKey": {"algorithm": "ECDSA", "size": 256},
                  "issuerRef": {"name": "bootstrap", "kind": "Issuer"}}},
        {"apiVersion": CM, "kind": "Issuer", "metadata": {**meta, "name": "platform-ca"},
         "spec": {"ca": {"secretName": "platform-ca"}}},
    ]


async def test_data_plane_serves_cert_managers_certificate(tmp_path: Path) -> None:
    async with workload_control_plane(tmp_path / "cp") as cp:
        kube = cp.client
        await apply_all(kube, cert_manager_crds(
            ("certificaterequests", "certificates", "issuers", "clusterissuers")))
        config = helm.Config(kubeconfig_path=cp.kubeconfig, namespace=NAMESPACE)
        values = {"dataPlane": {"certManager": {"issuerRef": {"name": "platform-ca"}}}}
        release = await asyncio.to_thread(config.install, CHART, "qkms", values,
                                          namespace=NAMESPACE, create_namespace=True,
                                          timeout=120)
        assert release["status"] == "deployed", release
        log_path = tmp_path / "cert-manager.log"
        replica = None
        async with running_controllers(cp.kubeconfig, NAMESPACE, CONTROLLERS,
                                       log_path) as controller:
            try:
                for obj in cert_manager_objects():
                    await kube.create(f"{CM}/{obj['kind'].lower()}s", obj, NAMESPACE)

                async def issued() -> dict | None:
                    assert controller.poll() is None, log_path.read_text(errors="replace")[-4000:]
                    secret = await kube.get("secrets", "qkms-data-plane-tls", NAMESPACE)
                    return secret if secret and (secret.get("data") or {}).get("tls.crt") else None
                secret = await eventually(
                    issued, timeout=120, what="cert-manager's Secret",
                    context=lambda: log_path.read_text(errors="replace")[-4000:])
                ca_secret = await kube.get("secrets", "platform-ca", NAMESPACE)
                ca = tmp_path / "platform-ca.crt"
                ca.write_bytes(base64.b64decode(ca_secret["data"]["tls.crt"]))
                assert base64.b64decode(secret["data"]["ca.crt"]) == ca.read_bytes()

                await signing_key(kube)
                token = await key_user(cp)
                (pod, _) = await pods_of(kube, NAMESPACE, SELECTOR, 2)
                replica = LocalPod(cp, pod, tmp_path / "volumes", tmp_path / "pods")
                await replica.start()
                await ready_key(kube, "signer")
                port = replica.named_ports["api"]
                url = f"https://127.0.0.1:{port}/v1/keys/{APP_NS}/signer:sign"
                body = {"input": base64.b64encode(b"over cert-manager's TLS").decode()}
                headers = {"Authorization": f"Bearer {token}"}
                trusted = ssl.create_default_context(cafile=str(ca))
                _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusted,
                                                          server_hostname=SERVICE_NAME)
                served = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                writer.close()
                issued_cert = x509.load_pem_x509_certificates(
                    base64.b64decode(secret["data"]["tls.crt"]))[0]
                assert served == issued_cert.public_bytes(serialization.Encoding.DER)
                async with aiohttp.ClientSession() as session:
                    async with session.post(url, json=body, headers=headers, ssl=trusted,
                                            server_hostname=SERVICE_NAME) as rsp:
                        answer = await rsp.json(content_type=None)
                        assert rsp.status == 200 and answer.get("signature"), answer
                    # The cluster's CA did not sign it: a client trusting that is refused.
                    other = ssl.create_default_context(cafile=str(cp.pki.ca_path))
                    with pytest.raises(aiohttp.ClientConnectorCertificateError):
                        await session.post(url, json=body, headers=headers, ssl=other,
                                           server_hostname=SERVICE_NAME)
            finally:
                if replica is not None:
                    await replica.stop()
                    print(replica.log()[-6000:])

"""cert-manager's own controllers, from a Certificate to its Secret, signed by qkms.

The Go module proxy serves github.com/cert-manager/cert-manager, which holds the
controllers (pkg/controller/...), but not the separate module of its binary
(github.com/cert-manager/cert-manager/cmd/controller: 403, "This module version is not
available"). tests/controlplane/certmanager is a main that runs those controllers as
cert-manager's binary does (its ContextFactory and controller registry), built by
``tests/controlplane/build.sh certmanager`` into ~/.cache/qkms/servers (never committed);
``QKMS_CERT_MANAGER_BIN`` names a ready binary instead. It runs as a process against the
test control plane with the admin kubeconfig, limited to the test's namespace, without
leader election, and with only the controllers a Certificate needs: certificates-trigger,
-key-manager, -request-manager, -issuing, -readiness, -revision-manager and
certificaterequests-approver. Its CRDs are those of the same release (from its Go module,
as in test_cert_manager_issuer.py).

So nothing here creates or approves a CertificateRequest: cert-manager makes the private
key, writes the CSR, approves the request; the real qkms operator signs it with the
ManagedKey (Ed25519 and ECDSA-P256 CAs); cert-manager writes the Secret. The Secret's
certificate is checked with ``openssl verify`` against the issuer's CA and its ``ca.crt``,
and against the Secret's private key.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.k8s.test_cert_manager_issuer import (
    CR,
    NS,
    audit_entries,
    conditions,
    issuer,
    issuer_ready,
    managed_key,
    namespace,
    openssl_verify,
)
from tests.support.cert_manager import cert_manager_crds, running_controllers
from tests.support.fixtures import apply_all
from tests.support.kubeclient import KubeClient, eventually

CERTIFICATES = "cert-manager.io/v1/certificates"
CONTROLLERS = ("certificates-trigger", "certificates-key-manager",
               "certificates-request-manager", "certificates-issuing",
               "certificates-readiness", "certificates-revision-manager",
               "certificaterequests-approver")
CA_ALGORITHMS = ("Ed25519", "ECDSA-P256")


@pytest.fixture
async def cert_manager_controller(control_plane, kube: KubeClient, tmp_path: Path):
    """cert-manager's CRDs installed and its controllers running in namespace NS."""
    await apply_all(kube, cert_manager_crds(
        ("certificaterequests", "certificates", "issuers", "clusterissuers")))
    async with running_controllers(control_plane.kubeconfig, NS, CONTROLLERS,
                                   tmp_path / "cert-manager.log",
                                   "--cluster-resource-namespace=kube-system") as proc:
        yield proc


@pytest.fixture
async def operator(cert_manager_controller, issuer_operator):
    return issuer_operator


def key_name(algorithm: str) -> str:
    return "ca-" + algorithm.lower()


async def test_a_certificate_gets_a_secret_signed_by_the_managed_key(operator, kube,
                                                                     cert_manager_controller,
                                                                     tmp_path):
    await namespace(kube)
    cas, serials = {}, {}
    for algorithm in CA_ALGORITHMS:
        await managed_key(kube, key_name(algorithm), algorithm)
        await issuer(kube, key_name(algorithm), key_name(algorithm),
                     policy={"allowedDnsNames": ["*.payments.svc"]})
    for algorithm in CA_ALGORITHMS:
        status = (await issuer_ready(kube, key_name(algorithm)))["status"]
        cas[algorithm] = status["caCertificate"].encode()
        # What the README shows: a Certificate pointing at the KeyIssuer, nothing else.
        await kube.create(CERTIFICATES, {
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": f"web-{key_name(algorithm)}", "namespace": NS},
            "spec": {"secretName": f"web-{key_name(algorithm)}-tls",
                     "dnsNames": [f"web-{key_name(algorithm)}.payments.svc"],
                     "duration": "720h",
                     "privateKey": {"algorithm": "ECDSA", "size": 256},
                     "issuerRef": {"group": "qkms.io", "kind": "KeyIssuer",
                                   "name": key_name(algorithm)}}}, NS)
    for algorithm in CA_ALGORITHMS:
        name = f"web-{key_name(algorithm)}"

        async def ready(name: str = name):
            body = await kube.get(CERTIFICATES, name, NS)
            return body if conditions(body).get("Ready", {}).get("status") == "True" else None

        async def context(name: str = name) -> str:
            certificate = await kube.get(CERTIFICATES, name, NS)
            requests = await kube.list(CR, NS)
            return f"Certificate: {(certificate or {}).get('status')}\nCertificateRequests: " \
                + str([(r["metadata"]["name"], r.get("status")) for r in requests])
        body = await eventually(ready, timeout=120, what=f"Certificate {name} Ready",
                                context=context)
        assert conditions(body)["Ready"]["reason"] == "Ready"
        secret = await kube.get("secrets", f"{name}-tls", NS)
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        assert secret["type"] == "kubernetes.io/tls"
        ca_pem, leaf_pem = cas[algorithm], data["tls.crt"]
        ca = x509.load_pem_x509_certificate(ca_pem)
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        # The CA cert-manager copied from the request's status.ca is the issuer's.
        assert x509.load_pem_x509_certificate(data["ca.crt"]) == ca
        # Signed by the ManagedKey (the CA's key), checked by OpenSSL and by cryptography.
        openssl_verify(tmp_path, ca_pem, leaf_pem)
        openssl_verify(tmp_path, data["ca.crt"], leaf_pem)
        leaf.verify_directly_issued_by(ca)
        assert leaf.issuer == ca.subject
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [f"{name}.payments.svc"]
        # The key cert-manager made (and kept in the Secret) is the certificate's.
        key = serialization.load_pem_private_key(data["tls.key"], None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key() == leaf.public_key()
        assert body["status"]["notAfter"] == leaf.not_valid_after_utc.strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        # cert-manager made and approved the request; qkms signed it.
        requests = [r for r in await kube.list(CR, NS)
                    if r["metadata"]["annotations"].get("cert-manager.io/certificate-name")
                    == name]
        assert len(requests) == 1
        approved = conditions(requests[0])["Approved"]
        assert (approved["status"], approved["reason"]) == ("True", "cert-manager.io")
        assert conditions(requests[0])["Ready"]["reason"] == "Issued"
        serials[name] = format(leaf.serial_number, "x")
    # Every issuance audited, with cert-manager's request and who made it (spec.username:
    # the controller's user, the admin of the test control plane).
    issued = {e["details"]["certificate_request"]: e for e in
              audit_entries(operator.cwd, "ISSUE_CERTIFICATE") if e["result"] != "denied"}
    assert {where.split("/")[1].rsplit("-", 1)[0] for where in issued} == set(serials)
    for entry in issued.values():
        name = entry["details"]["certificate_request"].split("/")[1].rsplit("-", 1)[0]
        assert entry["details"]["serial"] == serials[name]
        assert entry["details"]["requester"]

"""The chart's dataPlane.certManager value: a cert-manager Certificate for the data plane.

With ``dataPlane.certManager.issuerRef.name`` set, the chart renders a Certificate for the
Service's DNS names into the Secret the pods mount (``QKMS_TLS_CERT``/``KEY``), instead of
qkms's own CA; without it nothing cert-manager is rendered. The Certificate is checked by
the real API server against cert-manager's own CRD (v1.21.2, the release the cert-manager
tests build), with a server-side dry run.
"""

from __future__ import annotations

import pytest

from tests.install.helpers import NAMESPACE, find
from tests.install.test_manifests import render
from tests.support.cert_manager import cert_manager_crds
from tests.support.fixtures import apply_all

ISSUER = {"name": "platform-ca", "kind": "ClusterIssuer"}


def test_no_certificate_without_an_issuer() -> None:
    objects = render()
    assert "Certificate" not in {o["kind"] for o in objects}
    container = find(objects, "StatefulSet", "qkms")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "QKMS_TLS", "value": "auto"} in container["env"]


def test_an_issuer_renders_a_certificate_the_pods_serve() -> None:
    objects = render({"dataPlane": {"certManager": {"issuerRef": ISSUER}}}, namespace="keys")
    certificate = find(objects, "Certificate", "qkms-data-plane")
    spec = certificate["spec"]
    assert certificate["metadata"]["namespace"] == "keys"
    assert spec["dnsNames"] == ["qkms", "qkms.keys", "qkms.keys.svc",
                                "qkms.keys.svc.cluster.local"]
    assert spec["issuerRef"] == {**ISSUER, "group": "cert-manager.io"}
    assert spec["secretName"] == "qkms-data-plane-tls"
    pod = find(objects, "StatefulSet", "qkms")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "qkms-data-plane-tls"}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert "QKMS_TLS" not in env and env["QKMS_TLS_CERT"] == "/etc/qkms/tls/tls.crt"
    # tlsSecretName names the Secret; the defaults of kind and group are cert-manager's.
    named = render({"dataPlane": {"tlsSecretName": "serving",
                                  "certManager": {"issuerRef": {"name": "ca"},
                                                  "clusterDomain": "corp.example"}}})
    spec = find(named, "Certificate", "qkms-data-plane")["spec"]
    assert spec["secretName"] == "serving" and spec["issuerRef"]["kind"] == "Issuer"
    assert spec["dnsNames"][-1] == f"qkms.{NAMESPACE}.svc.corp.example"


def test_a_bad_issuer_kind_is_refused_by_the_schema() -> None:
    with pytest.raises(Exception, match="kind"):
        render({"dataPlane": {"certManager": {"issuerRef": {"name": "ca", "kind": "Secret"}}}})


async def test_the_certificate_is_valid_for_cert_managers_crd(kube) -> None:
    await apply_all(kube, cert_manager_crds(("certificates",)))
    objects = render({"dataPlane": {"certManager": {"issuerRef": ISSUER}}})
    certificate = find(objects, "Certificate", "qkms-data-plane")
    path = await kube.path("cert-manager.io/v1/certificates", NAMESPACE)
    stored = await kube.request("POST", f"{path}?dryRun=All&fieldValidation=Strict",
                                body=certificate)
    assert stored["spec"]["dnsNames"] == certificate["spec"]["dnsNames"]

"""TLS for the data plane in a cluster, with nothing to install first (``QKMS_TLS=auto``).

On its first start the operator makes a CA and a serving certificate for its Service
(``qkms``, ``qkms.<ns>``, ``qkms.<ns>.svc``, ``qkms.<ns>.svc.cluster.local``, and
``localhost``/``127.0.0.1`` for ``kubectl port-forward``), and keeps them in the Secret
``qkms-tls`` of its namespace (``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key``): every
replica serves the same certificate, and a replica that starts when the certificate has
less than ``RENEW_DAYS`` left issues a new one under the same CA. Workloads trust the CA
through the ConfigMap ``qkms-ca`` (``ca.crt``), which the operator writes in its own
namespace and in each namespace where it reconciles a ManagedKey, so a pod can project it
beside an audience-bound token (README, "The data plane").

Certificates from elsewhere (cert-manager) are files instead: ``QKMS_TLS_CERT`` and
``QKMS_TLS_KEY`` win over ``auto``.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes.client.exceptions import ApiException

from qkms.model.names import CA_CONFIGMAP, MANAGED_BY, MANAGED_BY_LABEL, SERVICE

from .kube_api import TIMEOUT

TLS_SECRET = "qkms-tls"  # noqa: S105 - the Secret's name
CA_YEARS = 10
CERT_DAYS = 397
RENEW_DAYS = 30
LABELS = {MANAGED_BY_LABEL: MANAGED_BY, "app.kubernetes.io/part-of": "qkms"}


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def make_ca(now: dt.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("qkms data plane CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def dns_names(namespace: str) -> list[str]:
    return [SERVICE, f"{SERVICE}.{namespace}", f"{SERVICE}.{namespace}.svc",
            f"{SERVICE}.{namespace}.svc.cluster.local", "localhost"]


def issue(ca_pem: bytes, ca_key_pem: bytes, namespace: str,
          now: dt.datetime) -> tuple[bytes, bytes]:
    """A serving certificate for the Service, signed by the CA: (cert PEM, key PEM)."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names(namespace)]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (x509.CertificateBuilder().subject_name(_name(f"{SERVICE}.{namespace}.svc"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=CERT_DAYS), ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _decode(secret: Any) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _body(namespace: str, files: dict[str, bytes], version: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": TLS_SECRET, "namespace": namespace, "labels": LABELS}
    if version:
        meta["resourceVersion"] = version
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in files.items()}}


def _expiring(cert_pem: bytes, namespace: str, now: dt.datetime) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (cert.not_valid_after_utc - now < dt.timedelta(days=RENEW_DAYS)
            or set(names.get_values_for_type(x509.DNSName)) != set(dns_names(namespace)))


def load_or_create_tls(core: Any, namespace: str, now: dt.datetime | None = None
                       ) -> dict[str, bytes]:
    """``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key`` from the Secret, made on first use
    and renewed under the same CA when it nears its end (blocking: run it in a thread)."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        secret = core.read_namespaced_secret(TLS_SECRET, namespace, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status != 404:
            raise
        ca, ca_key = make_ca(now)
        cert, key = issue(ca, ca_key, namespace, now)
        files = {"ca.crt": ca, "ca.key": ca_key, "tls.crt": cert, "tls.key": key}
        try:
            core.create_namespaced_secret(namespace, _body(namespace, files),
                                          _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return load_or_create_tls(core, namespace, now)  # another replica made it
        return files
    files = _decode(secret)
    if _expiring(files["tls.crt"], namespace, now):
        files["tls.crt"], files["tls.key"] = issue(files["ca.crt"], files["ca.key"],
                                                   namespace, now)
        try:
            core.replace_namespaced_secret(TLS_SECRET, namespace, _body(
                namespace, files, secret.metadata.resource_version), _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return load_or_create_tls(core, namespace, now)  # another replica renewed it
    return files


def publish_ca(core: Any, namespace: str, ca_pem: bytes) -> None:
    """The ConfigMap ``qkms-ca`` (``ca.crt``) in `namespace`, for workloads to project."""
    metadata: dict[str, Any] = {"name": CA_CONFIGMAP, "namespace": namespace,
                                "labels": LABELS}
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
            "data": {"ca.crt": ca_pem.decode()}}
    try:
        current = core.read_namespaced_config_map(CA_CONFIGMAP, namespace,
                                                  _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status != 404:
            raise
        try:
            core.create_namespaced_config_map(namespace, body, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise
        return
    if (current.data or {}).get("ca.crt") != ca_pem.decode():
        metadata["resourceVersion"] = current.metadata.resource_version
        core.replace_namespaced_config_map(CA_CONFIGMAP, namespace, body,
                                           _request_timeout=TIMEOUT)

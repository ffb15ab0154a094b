"""qkms as a cert-manager issuer, on the real control plane with cert-manager's own CRDs:
every CA algorithm (RSA with PSS or PKCS#1 v1.5), CA rotation with a cross-signed bridge
and the CA bundle ConfigMap, certificate revocation with the CRL, and CA key revocation.

cert-manager's CRDs come at test time from its Go module on the Go module proxy
(``go mod download``, cached under ~/.cache/qkms-gomod, outside the clone; never
committed), at the release tests/controlplane/certmanager/go.mod pins:
deploy/crds/cert-manager.io_certificaterequests.yaml, template labels replaced. Here the
cert-manager controller does not run: the tests create CertificateRequests and approve or
deny them as cert-manager's approver does (condition Approved or Denied on the status
subresource), and the real qkms operator, logged in as its ServiceAccount, signs them with
ManagedKeys that never leave the provider. test_cert_manager_controller.py runs
cert-manager's own controllers (built from the same module) from a Certificate to its
Secret.

Each certificate is checked independently of qkms: classical chains with
``cryptography`` (verify_directly_issued_by) and ``openssl verify``; ML-DSA with
``cryptography``'s ML-DSA public keys (its X.509 layer has no ML-DSA in this version, so
the signature over the TBS bytes is checked) and with dilithium-py; the composite with
dilithium-py (ML-DSA-65 over M' with the draft's label as context) and ``cryptography``'s
Ed25519.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.x509.oid import NameOID
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87

from qkms.audit.search import Query, search
from tests.support.cert_manager import cert_manager_crds
from tests.support.fixtures import apply_all
from tests.support.kubeclient import KubeClient, eventually

NS = "payments"
MK, CR = "managedkeys", "cert-manager.io/v1/certificaterequests"
KI, CKI = "qkms.io/v1alpha1/keyissuers", "qkms.io/v1alpha1/clusterkeyissuers"
CA_ALGORITHMS = ["Ed25519", "ECDSA-P256", "RSA-2048", "RSA-4096", "ML-DSA-44", "ML-DSA-65",
                 "ML-DSA-87", "Ed25519+ML-DSA-65"]
CLASSICAL = {"Ed25519", "ECDSA-P256", "RSA-2048", "RSA-4096"}
MLDSA_OIDS = {"ML-DSA-44": "2.16.840.1.101.3.4.3.17", "ML-DSA-65": "2.16.840.1.101.3.4.3.18",
              "ML-DSA-87": "2.16.840.1.101.3.4.3.19"}
COMPOSITE_OID = "1.3.6.1.5.5.7.6.48"
DILITHIUM = {"ML-DSA-44": ML_DSA_44, "ML-DSA-65": ML_DSA_65, "ML-DSA-87": ML_DSA_87}


@pytest.fixture
async def cert_manager(kube: KubeClient) -> KubeClient:
    await apply_all(kube, cert_manager_crds())
    return kube


@pytest.fixture
async def operator(cert_manager, issuer_operator):
    yield issuer_operator
    for body in await cert_manager.list(CKI):  # cluster-scoped: the next test's are its own
        await cert_manager.delete(CKI, body["metadata"]["name"])


# -- helpers ------------------------------------------------------------------------------

def conditions(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


async def namespace(kube: KubeClient, name: str = NS) -> None:
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"qkms.io/environment": "dev"}}})


async def managed_key(kube: KubeClient, name: str, algorithm: str) -> None:
    await kube.create(MK, {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                           "metadata": {"name": name, "namespace": NS},
                           "spec": {"usage": "SIGNING", "algorithm": algorithm,
                                    "owner": "pki"}}, NS)


def key_name(algorithm: str) -> str:
    return "ca-" + algorithm.lower().replace("+", "-")


async def issuer(kube: KubeClient, name: str, key: str, *, policy: dict | None = None,
                 cluster: bool = False, **extra: Any) -> None:
    spec = {"keyRef": {"name": key, **({"namespace": NS} if cluster else {})},
            "ca": {"selfSigned": {"commonName": f"{name} CA", "organization": ["qkms tests"],
                                  "pathLength": 0}},
            **({"policy": policy} if policy else {}), **extra}
    meta = {"name": name, **({} if cluster else {"namespace": NS})}
    body = {"apiVersion": "qkms.io/v1alpha1", "kind": "ClusterKeyIssuer" if cluster
            else "KeyIssuer", "metadata": meta, "spec": spec}
    await kube.create(CKI if cluster else KI, body, None if cluster else NS)


async def issuer_ready(kube: KubeClient, name: str, *, cluster: bool = False) -> dict:
    async def probe():
        body = await kube.get(CKI if cluster else KI, name, None if cluster else NS)
        return body if conditions(body).get("Ready", {}).get("status") == "True" else None
    return await eventually(probe, timeout=90, what=f"issuer {name} Ready",
                            context=lambda: "")


def csr_pem(key: Any, dns: list[str], cn: str | None = None, uris: list[str] = ()) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    names = [*(x509.DNSName(d) for d in dns), *(x509.UniformResourceIdentifier(u) for u in uris)]
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    digest = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, digest).public_bytes(serialization.Encoding.PEM)


def mldsa_csr_pem(key: mldsa.MLDSA65PrivateKey, dns: str) -> bytes:
    """An ML-DSA-65 PKCS#10 request, written with asn1crypto (cryptography cannot)."""
    oid = core.ObjectIdentifier(MLDSA_OIDS["ML-DSA-65"])
    spki = core.Sequence.load(  # SEQUENCE { SEQUENCE { oid }, BIT STRING key }
        b"\x30" + _len(core.Sequence(contents=oid.dump()).dump()
                       + core.OctetBitString(key.public_key().public_bytes_raw()).dump())
        + core.Sequence(contents=oid.dump()).dump()
        + core.OctetBitString(key.public_key().public_bytes_raw()).dump())
    san = core.Sequence(contents=core.ObjectIdentifier("2.5.29.17").dump() + core.OctetString(
        core.Sequence(contents=b"\x82" + _len_raw(dns.encode()) + dns.encode()).dump()).dump())
    ext_req = core.Sequence(contents=core.ObjectIdentifier("1.2.840.113549.1.9.14").dump()
                            + core.SetOf(contents=core.Sequence(contents=san.dump()).dump()).dump())
    info = core.Sequence(contents=core.Integer(0).dump() + core.Sequence(contents=b"").dump()
                         + spki.dump()
                         + b"\xa0" + _len_raw(ext_req.dump()) + ext_req.dump())
    signature = key.sign(info.dump())
    request = core.Sequence(contents=info.dump() + core.Sequence(contents=oid.dump()).dump()
                            + core.OctetBitString(signature).dump())
    body = base64.encodebytes(request.dump()).decode().replace("\n", "")
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{lines}\n-----END CERTIFICATE REQUEST-----\n" \
        .encode()


def _len_raw(data: bytes) -> bytes:
    n = len(data)
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _len(data: bytes) -> bytes:
    return _len_raw(data)


async def request(kube: KubeClient, name: str, pem: bytes, issuer_name: str, *,
                  kind: str = "KeyIssuer", duration: str | None = None,
                  usages: list[str] | None = None) -> None:
    spec = {"request": base64.b64encode(pem).decode(),
            "issuerRef": {"group": "qkms.io", "kind": kind, "name": issuer_name},
            **({"duration": duration} if duration else {}),
            **({"usages": usages} if usages else {})}
    await kube.create(CR, {"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
                           "metadata": {"name": name, "namespace": NS}, "spec": spec}, NS)


async def decide(kube: KubeClient, name: str, approved: bool = True) -> None:
    """What cert-manager's approver does: a condition on the status subresource."""
    kind = "Approved" if approved else "Denied"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = await kube.get(CR, name, NS)
    kept = (body.get("status") or {}).get("conditions") or []
    await kube.patch(CR, name, {"status": {"conditions": [*kept, {
        "type": kind, "status": "True", "reason": "qkms-tests",
        "message": f"{kind.lower()} by the test", "lastTransitionTime": now}]}}, NS,
        subresource="status")


async def finished(kube: KubeClient, name: str) -> dict:
    async def probe():
        body = await kube.get(CR, name, NS)
        ready = conditions(body).get("Ready", {})
        return body if ready.get("reason") in ("Issued", "Failed") else None
    return await eventually(probe, timeout=60, what=f"CertificateRequest {name} finished")


def _tlvs(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(tag, content, whole) of each DER element in ``data`` (a test-local reader)."""
    out, i = [], 0
    while i < len(data):
        tag, first, j = data[i], data[i + 1], i + 2
        if first & 0x80:
            count = first & 0x7F
            length, j = int.from_bytes(data[j:j + count], "big"), j + count
        else:
            length = first
        out.append((tag, data[j:j + length], data[i:j + length]))
        i = j + length
    return out


def spki_of(cert_der: bytes) -> tuple[str, bytes]:
    """The key OID and raw public key of a certificate, read without qkms."""
    tbs = _tlvs(_tlvs(_tlvs(cert_der)[0][1])[0][1])
    spki = tbs[6] if tbs[0][0] == 0xA0 else tbs[5]
    algorithm, key = _tlvs(spki[1])
    oid = core.ObjectIdentifier.load(_tlvs(algorithm[1])[0][2]).dotted
    return oid, key[1][1:]


def verify_pq(algorithm: str, issuer_der: bytes, cert: x509.Certificate) -> None:
    """Independent checks of an ML-DSA or composite signature over the TBS bytes."""
    oid, raw = spki_of(issuer_der)
    tbs, sig = cert.tbs_certificate_bytes, cert.signature
    if algorithm in MLDSA_OIDS:
        assert oid == MLDSA_OIDS[algorithm] == cert.signature_algorithm_oid.dotted_string
        public = getattr(mldsa, f"MLDSA{algorithm[-2:]}PublicKey").from_public_bytes(raw)
        public.verify(sig, tbs)  # raises if invalid
        assert DILITHIUM[algorithm].verify(raw, tbs, sig)
        return
    assert oid == COMPOSITE_OID == cert.signature_algorithm_oid.dotted_string
    label = b"COMPSIG-MLDSA65-Ed25519-SHA512"
    message = b"CompositeAlgorithmSignatures2025" + label + b"\x00" + hashlib.sha512(tbs).digest()
    assert ML_DSA_65.verify(raw[:1952], message, sig[:3309], ctx=label)
    ed25519.Ed25519PublicKey.from_public_bytes(raw[1952:]).verify(sig[3309:], message)


def openssl_verify(tmp: Path, ca_pem: bytes, leaf_pem: bytes) -> None:
    (tmp / "ca.pem").write_bytes(ca_pem)
    (tmp / "leaf.pem").write_bytes(leaf_pem)
    done = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", str(tmp / "ca.pem"),
                           str(tmp / "leaf.pem")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr


def audit_entries(workdir: Path, operation: str) -> list[dict[str, Any]]:
    return list(search(workdir / "data" / "dev" / "audit", Query(operation=operation)))


# -- tests ---------------------------------------------------------------------------------

async def test_every_ca_algorithm_signs_verifiable_certificates(operator, cert_manager,
                                                                tmp_path):
    kube = cert_manager
    await namespace(kube)
    for algorithm in CA_ALGORITHMS:
        await managed_key(kube, key_name(algorithm), algorithm)
        await issuer(kube, key_name(algorithm), key_name(algorithm),
                     policy={"allowedDnsNames": ["*.payments.svc"]})
    leaves = {"ecdsa": ec.generate_private_key(ec.SECP256R1()),
              "ed25519": ed25519.Ed25519PrivateKey.generate(),
              "rsa": rsa.generate_private_key(65537, 2048),
              "mldsa": mldsa.MLDSA65PrivateKey.generate()}
    issued = {}
    for i, algorithm in enumerate(CA_ALGORITHMS):
        status = (await issuer_ready(kube, key_name(algorithm)))["status"]
        ca = x509.load_pem_x509_certificate(status["caCertificate"].encode())
        assert status["caFingerprint"] == ca.fingerprint(hashes.SHA256()).hex()
        leaf_kind = list(leaves)[i % len(leaves)]
        dns = f"web-{i}.payments.svc"
        pem = mldsa_csr_pem(leaves[leaf_kind], dns) if leaf_kind == "mldsa" else \
            csr_pem(leaves[leaf_kind], [dns], cn=dns)
        await request(kube, f"web-{i}", pem, key_name(algorithm), duration="720h",
                      usages=["digital signature", "server auth"])
        await decide(kube, f"web-{i}")
        issued[algorithm] = (f"web-{i}", dns, ca, leaf_kind)
    for algorithm, (name, dns, ca, leaf_kind) in issued.items():
        body = await finished(kube, name)
        ready = conditions(body)["Ready"]
        assert (ready["status"], ready["reason"]) == ("True", "Issued"), ready
        leaf_pem = base64.b64decode(body["status"]["certificate"])
        ca_pem = base64.b64decode(body["status"]["ca"])
        assert x509.load_pem_x509_certificate(ca_pem) == ca
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        assert leaf.issuer == ca.subject
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [dns]
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert datetime.timedelta(hours=720) <= lifetime <= datetime.timedelta(hours=721)
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        ca_der = ca.public_bytes(serialization.Encoding.DER)
        if algorithm in CLASSICAL:
            leaf.verify_directly_issued_by(ca)
            ca.verify_directly_issued_by(ca)
            if leaf_kind != "mldsa":  # OpenSSL 3.0 cannot read an ML-DSA leaf's key
                openssl_verify(tmp_path, ca_pem, leaf_pem)
        else:
            verify_pq(algorithm, ca_der, leaf)
            verify_pq(algorithm, ca_der, ca)  # the CA's self-signature too
        _, leaf_raw = spki_of(leaf.public_bytes(serialization.Encoding.DER))
        if leaf_kind == "mldsa":
            assert leaf_raw == leaves["mldsa"].public_key().public_bytes_raw()
    # Every issuance is in the audit chain: serial, subject, SANs and requester.
    entries = {e["details"]["certificate_request"]: e
               for e in audit_entries(operator.cwd, "ISSUE_CERTIFICATE")}
    for algorithm, (name, dns, _ca, _leaf) in issued.items():
        entry = entries[f"{NS}/{name}"]
        leaf = x509.load_pem_x509_certificate(base64.b64decode(
            (await kube.get(CR, name, NS))["status"]["certificate"]))
        assert entry["result"] == "success"
        assert entry["key_name"] == f"{NS}/{key_name(algorithm)}"
        assert int(entry["details"]["serial"], 16) == leaf.serial_number
        assert entry["details"]["sans"] == f"DNS:{dns}"
        assert entry["details"]["requester"] == entry["actor"]["id"]
    ca_entries = audit_entries(operator.cwd, "ISSUE_CA_CERTIFICATE")
    assert {e["key_name"] for e in ca_entries} >= {f"{NS}/{key_name(a)}" for a in CA_ALGORITHMS}


async def test_requests_the_issuer_must_not_sign(operator, cert_manager, tmp_path):
    kube = cert_manager
    await namespace(kube)
    await managed_key(kube, "ca", "Ed25519")
    await issuer(kube, "strict", "ca", policy={"allowedDnsNames": ["*.payments.svc"],
                                               "maxDuration": "P30D"})
    await issuer_ready(kube, "strict")
    key = ec.generate_private_key(ec.SECP256R1())
    good = csr_pem(key, ["api.payments.svc"])
    # Unapproved and denied: left alone (no certificate, no Ready from qkms).
    await request(kube, "unapproved", good, "strict", duration="240h")
    await request(kube, "denied", good, "strict")
    await decide(kube, "denied", approved=False)
    # Refused: out-of-policy names, too long, malformed, tampered, a CA request.
    await request(kube, "other-domain", csr_pem(key, ["api.example.com"]), "strict")
    await request(kube, "other-cn", csr_pem(key, ["api.payments.svc"], cn="evil.example.com"),
                  "strict")
    await request(kube, "two-labels", csr_pem(key, ["a.b.payments.svc"]), "strict")
    await request(kube, "too-long", good, "strict", duration="8760h")
    await request(kube, "malformed", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                  b"-----END CERTIFICATE REQUEST-----\n", "strict")
    der = bytearray(x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # a flipped bit in the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    await request(kube, "tampered", tampered, "strict")
    await request(kube, "ok", good, "strict", duration="240h")
    for name in ("other-domain", "other-cn", "two-labels", "too-long", "malformed", "tampered",
                 "ok"):
        await decide(kube, name)
    expected = {"other-domain": "'api.example.com' is not allowed",
                "other-cn": "commonName 'evil.example.com' is not allowed",
                "two-labels": "'a.b.payments.svc' is not allowed",
                "too-long": "above the issuer's maximum",
                "malformed": "not a PEM certificate signing request",
                "tampered": "signature does not verify"}
    for name, words in expected.items():
        body = await finished(kube, name)
        ready = conditions(body)["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "Failed"), ready
        assert words in ready["message"], ready["message"]
        assert not body["status"].get("certificate")
        assert body["status"].get("failureTime")
    ok = await finished(kube, "ok")
    assert conditions(ok)["Ready"]["reason"] == "Issued"
    for name in ("unapproved", "denied"):
        body = await kube.get(CR, name, NS)
        assert "Ready" not in conditions(body) and not (body.get("status") or {}) \
            .get("certificate"), body.get("status")
    refusals = [e for e in audit_entries(operator.cwd, "ISSUE_CERTIFICATE")
                if e["result"] == "denied"]
    assert {e["details"]["certificate_request"] for e in refusals} == \
        {f"{NS}/{n}" for n in expected}
    # Approving later issues it (the event of the approval is what the operator acts on).
    await decide(kube, "unapproved")
    assert conditions(await finished(kube, "unapproved"))["Ready"]["reason"] == "Issued"


async def test_cluster_issuer_and_ca_from_a_secret(operator, cert_manager, tmp_path):
    kube = cert_manager
    await namespace(kube)
    await managed_key(kube, "root", "ECDSA-P256")
    await issuer(kube, "cluster-ca", "root", cluster=True)
    status = (await issuer_ready(kube, "cluster-ca", cluster=True))["status"]
    # The same CA certificate, handed over in a Secret, backs a namespaced issuer.
    await kube.create("secrets", {"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": "root-ca", "namespace": NS},
                                  "stringData": {"tls.crt": status["caCertificate"]}}, NS)
    await kube.create(KI, {"apiVersion": "qkms.io/v1alpha1", "kind": "KeyIssuer",
                           "metadata": {"name": "from-secret", "namespace": NS},
                           "spec": {"keyRef": {"name": "root"},
                                    "ca": {"secret": {"name": "root-ca"}}}}, NS)
    assert (await issuer_ready(kube, "from-secret"))["status"]["caFingerprint"] == \
        status["caFingerprint"]
    # A CA certificate of another key is refused: CAKeyMismatch.
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")])
    now = datetime.datetime.now(datetime.UTC)
    foreign = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(other.public_key()).serial_number(7).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
               .sign(other, hashes.SHA256()))
    await kube.create("secrets", {"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": "foreign-ca", "namespace": NS},
                                  "stringData": {"tls.crt": foreign.public_bytes(
                                      serialization.Encoding.PEM).decode()}}, NS)
    await kube.create(KI, {"apiVersion": "qkms.io/v1alpha1", "kind": "KeyIssuer",
                           "metadata": {"name": "mismatch", "namespace": NS},
                           "spec": {"keyRef": {"name": "root"},
                                    "ca": {"secret": {"name": "foreign-ca"}}}}, NS)

    async def mismatch():
        body = await kube.get(KI, "mismatch", NS)
        return conditions(body).get("Ready", {}).get("reason") == "CAKeyMismatch"
    await eventually(mismatch, timeout=30, what="CAKeyMismatch")
    key = ed25519.Ed25519PrivateKey.generate()
    await request(kube, "via-cluster", csr_pem(key, ["svc.payments.svc"]), "cluster-ca",
                  kind="ClusterKeyIssuer")
    await request(kube, "via-secret", csr_pem(key, ["svc.payments.svc"]), "from-secret")
    for name in ("via-cluster", "via-secret"):
        await decide(kube, name)
        body = await finished(kube, name)
        assert conditions(body)["Ready"]["reason"] == "Issued"
        leaf = x509.load_pem_x509_certificate(base64.b64decode(body["status"]["certificate"]))
        ca_pem = base64.b64decode(body["status"]["ca"])
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
        openssl_verify(tmp_path, ca_pem, base64.b64decode(body["status"]["certificate"]))


# -- PKCS#1 v1.5, rotation, revocation ------------------------------------------------------

BUNDLE = "v1/configmaps"
SHA256_RSA = x509.oid.SignatureAlgorithmOID.RSA_WITH_SHA256


def run_openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True)


async def issue(kube: KubeClient, name: str, issuer_name: str, dns: str) -> dict:
    key = ec.generate_private_key(ec.SECP256R1())
    await request(kube, name, csr_pem(key, [dns]), issuer_name)
    await decide(kube, name)
    body = await finished(kube, name)
    assert conditions(body)["Ready"]["reason"] == "Issued", conditions(body)["Ready"]
    return body


def leaf_of(body: dict) -> tuple[bytes, x509.Certificate]:
    pem = base64.b64decode(body["status"]["certificate"])
    return pem, x509.load_pem_x509_certificate(pem)


async def bundle_map(kube: KubeClient, issuer_name: str, ready=None) -> dict[str, str]:
    async def probe():
        body = await kube.get(BUNDLE, f"{issuer_name}-ca-bundle", NS)
        data = (body or {}).get("data") or {}
        return data if data and (ready is None or ready(data)) else None
    return await eventually(probe, timeout=60, what=f"ConfigMap {issuer_name}-ca-bundle")


def crl_of(data: dict[str, str]) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(data["ca.crl"].encode())


def openssl_crl_verify(tmp: Path, ca_pem: bytes, crl_pem: str) -> None:
    (tmp / "crl-ca.pem").write_bytes(ca_pem)
    (tmp / "crl.pem").write_text(crl_pem)
    done = run_openssl("crl", "-in", str(tmp / "crl.pem"), "-noout", "-CAfile",
                       str(tmp / "crl-ca.pem"))
    assert done.returncode == 0 and "verify OK" in done.stdout + done.stderr, done.stderr


async def test_rsa_ca_signs_with_pkcs1v15_when_asked(operator, cert_manager, tmp_path):
    kube = cert_manager
    await namespace(kube)
    await managed_key(kube, "rsa-ca", "RSA-2048")
    await issuer(kube, "legacy", "rsa-ca", rsaSignatureScheme="PKCS1v15")
    status = (await issuer_ready(kube, "legacy"))["status"]
    ca_pem = status["caCertificate"].encode()
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert ca.signature_algorithm_oid == SHA256_RSA  # sha256WithRSAEncryption, not PSS
    ca.verify_directly_issued_by(ca)
    leaf_pem, leaf = leaf_of(await issue(kube, "legacy-web", "legacy", "web.payments.svc"))
    assert leaf.signature_algorithm_oid == SHA256_RSA
    leaf.verify_directly_issued_by(ca)
    openssl_verify(tmp_path, ca_pem, leaf_pem)
    data = await bundle_map(kube, "legacy", lambda d: d.get("ca.crl"))
    crl = crl_of(data)
    assert crl.signature_algorithm_oid == SHA256_RSA and crl.is_signature_valid(ca.public_key())
    openssl_crl_verify(tmp_path, ca_pem, data["ca.crl"])


async def test_ca_rotation_makes_a_new_root_a_bridge_and_a_bundle_of_both(
        operator, cert_manager, tmp_path):
    kube = cert_manager
    await namespace(kube)
    await managed_key(kube, "rotating", "ECDSA-P256")
    await issuer(kube, "rotating", "rotating")
    first = (await issuer_ready(kube, "rotating"))["status"]
    old_pem = first["caCertificate"].encode()
    old_ca = x509.load_pem_x509_certificate(old_pem)
    old_leaf_pem, old_leaf = leaf_of(await issue(kube, "before", "rotating", "a.payments.svc"))
    data = await bundle_map(kube, "rotating")
    assert [c.fingerprint(hashes.SHA256()) for c in x509.load_pem_x509_certificates(
        data["ca.crt"].encode())] == [old_ca.fingerprint(hashes.SHA256())]
    # A rotation (as an operator would ask, by annotation): the old version goes to grace.
    await kube.patch(MK, "rotating", {"metadata": {"annotations": {"qkms.io/rotate": "MANUAL"}}},
                     NS)

    async def rotated():
        body = await kube.get(KI, "rotating", NS)
        st = body.get("status") or {}
        return st if st.get("caKeyId") not in (None, first["caKeyId"]) and \
            st.get("bridges") else None
    second = await eventually(rotated, timeout=60, what="a new CA after the rotation")
    new_pem = second["caCertificate"].encode()
    new_ca = x509.load_pem_x509_certificate(new_pem)
    assert new_ca.public_key() != old_ca.public_key()
    assert [p["keyId"] for p in second["previousCAs"]] == [first["caKeyId"]]
    data = await bundle_map(kube, "rotating", lambda d: d["ca.crt"].count("BEGIN") == 2)
    bundle = x509.load_pem_x509_certificates(data["ca.crt"].encode())
    assert [c.fingerprint(hashes.SHA256()) for c in bundle] == [
        new_ca.fingerprint(hashes.SHA256()), old_ca.fingerprint(hashes.SHA256())]
    # A certificate the old CA issued still verifies against the bundle.
    (tmp_path / "bundle.pem").write_text(data["ca.crt"])
    (tmp_path / "old-leaf.pem").write_bytes(old_leaf_pem)
    done = run_openssl("verify", "-x509_strict", "-CAfile", str(tmp_path / "bundle.pem"),
                       str(tmp_path / "old-leaf.pem"))
    assert done.returncode == 0, done.stdout + done.stderr
    old_leaf.verify_directly_issued_by(bundle[1])
    # The bridge: the new CA's subject and key, signed by the old version.
    bridge_pem = data["bridges.crt"].encode()
    bridge = x509.load_pem_x509_certificate(bridge_pem)
    assert second["bridges"][0]["fromKeyId"] == first["caKeyId"]
    assert bridge.subject == new_ca.subject and bridge.public_key() == new_ca.public_key()
    bridge.verify_directly_issued_by(old_ca)
    assert bridge.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    openssl_verify(tmp_path, old_pem, bridge_pem)
    # New certificates are signed by the new version, and verify under the new root, and
    # under the old root alone through the bridge.
    new_leaf_pem, new_leaf = leaf_of(await issue(kube, "after", "rotating", "b.payments.svc"))
    new_leaf.verify_directly_issued_by(new_ca)
    openssl_verify(tmp_path, new_pem, new_leaf_pem)
    (tmp_path / "old-root.pem").write_bytes(old_pem)
    (tmp_path / "bridge.pem").write_bytes(bridge_pem)
    (tmp_path / "new-leaf.pem").write_bytes(new_leaf_pem)
    done = run_openssl("verify", "-x509_strict", "-CAfile", str(tmp_path / "old-root.pem"),
                       "-untrusted", str(tmp_path / "bridge.pem"), str(tmp_path / "new-leaf.pem"))
    assert done.returncode == 0, done.stdout + done.stderr
    # The CRL is signed by the current version.
    crl_of(await bundle_map(kube, "rotating", lambda d: crl_of(d).extensions
                            .get_extension_for_class(x509.AuthorityKeyIdentifier).value
                            .key_identifier == new_ca.extensions.get_extension_for_class(
                                x509.SubjectKeyIdentifier).value.digest))
    bridges = [e for e in audit_entries(operator.cwd, "ISSUE_CA_CERTIFICATE")
               if e["details"].get("kind") == "bridge"]
    assert [e["key_id"] for e in bridges] == [first["caKeyId"]]
    signs = [e for e in audit_entries(operator.cwd, "SIGN")
             if e["details"].get("purpose") == "ca_bridge"]
    assert [e["key_id"] for e in signs] == [first["caKeyId"]]


async def test_revocation_lists_certificates_in_the_crl_and_a_revoked_ca_key_stops_issuance(
        operator, cert_manager, tmp_path):
    kube = cert_manager
    await namespace(kube)
    await managed_key(kube, "revocable", "ECDSA-P256")
    await issuer(kube, "revocable", "revocable", crlNextUpdate="PT6H")
    ca_pem = (await issuer_ready(kube, "revocable"))["status"]["caCertificate"].encode()
    ca = x509.load_pem_x509_certificate(ca_pem)
    _, kept = leaf_of(await issue(kube, "kept", "revocable", "kept.payments.svc"))
    _, lost = leaf_of(await issue(kube, "lost", "revocable", "lost.payments.svc"))
    first = crl_of(await bundle_map(kube, "revocable", lambda d: d.get("ca.crl")))
    assert list(first) == [] and first.is_signature_valid(ca.public_key())
    assert first.next_update_utc - first.last_update_utc == datetime.timedelta(hours=6)
    # Revoked by annotating its CertificateRequest.
    await kube.patch(CR, "lost", {"metadata": {"annotations": {
        "qkms.io/revoke": "keyCompromise"}}}, NS)
    data = await bundle_map(kube, "revocable", lambda d: len(list(crl_of(d))) == 1)
    crl = crl_of(data)
    entry = crl.get_revoked_certificate_by_serial_number(lost.serial_number)
    assert entry is not None and crl.get_revoked_certificate_by_serial_number(
        kept.serial_number) is None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    assert crl.is_signature_valid(ca.public_key())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    openssl_crl_verify(tmp_path, ca_pem, data["ca.crl"])
    status = (await kube.get(KI, "revocable", NS))["status"]
    assert [r["serial"] for r in status["revokedCertificates"]] == [
        format(lost.serial_number, "x")]
    assert status["crlNumber"] == number
    revocations = audit_entries(operator.cwd, "REVOKE_CERTIFICATE")
    assert [(e["details"]["serial"], e["reason"]) for e in revocations] == [
        (format(lost.serial_number, "x"), "keyCompromise")]
    # Revoking the CA key stops issuance at once; the bundle is emptied, the CRL stays.
    await kube.patch(MK, "revocable", {"spec": {"revoked": {"reason": "compromised"}}}, NS)

    async def stopped():
        body = await kube.get(KI, "revocable", NS)
        ready = conditions(body).get("Ready", {})
        return ready if ready.get("reason") == "KeyRevoked" else None
    ready = await eventually(stopped, timeout=60, what="the issuer stopped")
    assert ready["status"] == "False" and "revoked" in ready["message"]
    key = ec.generate_private_key(ec.SECP256R1())
    await request(kube, "too-late", csr_pem(key, ["late.payments.svc"]), "revocable")
    await decide(kube, "too-late")
    body = await finished(kube, "too-late")
    ready = conditions(body)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Failed"), ready
    assert "revoked" in ready["message"] and not body["status"].get("certificate")
    data = await bundle_map(kube, "revocable", lambda d: d["ca.crt"] == "")
    assert crl_of(data).get_revoked_certificate_by_serial_number(lost.serial_number)

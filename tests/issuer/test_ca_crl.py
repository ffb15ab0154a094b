"""The issuer's pure CA-rotation and CRL functions (qkms.issuer.ca, qkms.issuer.crl), with
keys held by ``cryptography`` standing in for the provider; every result is checked by
``cryptography`` and ``openssl``, not by qkms."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from qkms.issuer import ca as ica
from qkms.issuer import crl as icrl
from qkms.issuer import x509 as ix

NOW = datetime.now(UTC).replace(microsecond=0)


def spki(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(key, tbs: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(tbs, ec.ECDSA(hashes.SHA256()))


def alg(key) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return ix.signature_algorithm("RSA-2048", "PKCS1v15")
    return ix.signature_algorithm("ECDSA-P256")


def root(key, name: str = "root CA") -> tuple[bytes, ix.CA]:
    tbs = ix.ca_tbs(subject=ix.ca_subject(name), spki_der=spki(key), signature_alg=alg(key),
                    serial=ix.serial_number(b"\x11" * 16), now=NOW,
                    duration=timedelta(days=30), path_length=0)
    pem = ix.to_pem(ix.certificate(tbs, alg(key), sign(key, tbs))).encode()
    return pem, ix.read_ca(pem)


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True)


def test_pkcs1v15_ca_is_sha256_with_rsa_and_verifies() -> None:
    key = rsa.generate_private_key(65537, 2048)
    pem, _ = root(key)
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSA_WITH_SHA256
    cert.verify_directly_issued_by(cert)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_bridge_certifies_the_new_root_under_the_old(tmp_path: Path, kind: str) -> None:
    make = (lambda: ec.generate_private_key(ec.SECP256R1())) if kind == "ec" else \
        (lambda: rsa.generate_private_key(65537, 2048))
    old_key, new_key = make(), make()
    old_pem, old = root(old_key)
    new_pem, new = root(new_key)
    tbs = ica.bridge_tbs(new=new, old=old, signature_alg=alg(old_key), serial=5, now=NOW,
                         path_length=ica.path_length(new_pem))
    assert ica.certified_spki(tbs) == spki(new_key)
    bridge_pem = ix.to_pem(ix.certificate(tbs, alg(old_key), sign(old_key, tbs))).encode()
    bridge = x509.load_pem_x509_certificate(bridge_pem)
    bridge.verify_directly_issued_by(x509.load_pem_x509_certificate(old_pem))
    assert bridge.subject == x509.load_pem_x509_certificate(new_pem).subject
    assert bridge.public_key() == new_key.public_key()
    (tmp_path / "old.pem").write_bytes(old_pem)
    (tmp_path / "bridge.pem").write_bytes(bridge_pem)
    done = openssl("verify", "-x509_strict", "-CAfile", str(tmp_path / "old.pem"),
                   str(tmp_path / "bridge.pem"))
    assert done.returncode == 0, done.stdout + done.stderr
    with pytest.raises(ix.Refused):
        ica.certified_spki(b"\x30\x00")


def test_bundle_keeps_order_once_and_drops_expired() -> None:
    a, _ = root(ec.generate_private_key(ec.SECP256R1()), "a")
    b, _ = root(ec.generate_private_key(ec.SECP256R1()), "b")
    text = ica.bundle([a.decode(), b.decode(), a.decode()], NOW)
    assert [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(
        text.encode())] == ["CN=a", "CN=b"]
    assert ica.bundle([a.decode()], NOW + timedelta(days=31)) == ""


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_crl_lists_revoked_serials_and_verifies(tmp_path: Path, kind: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else \
        rsa.generate_private_key(65537, 2048)
    pem, ca = root(key)
    entries = [icrl.Entry(0x1234, NOW - timedelta(hours=1), "keyCompromise",
                          NOW + timedelta(days=1)),
               icrl.Entry(0xABCDEF, NOW, "unspecified", None),
               icrl.Entry(0x99, NOW - timedelta(days=3), "superseded",
                          NOW - timedelta(days=1))]  # expired: left out
    tbs = icrl.crl_tbs(ca=ca, signature_alg=alg(key), this_update=NOW,
                       next_update=NOW + timedelta(days=7), number=3, entries=entries)
    crl_der = icrl.crl(tbs, alg(key), sign(key, tbs))
    crl = x509.load_der_x509_crl(crl_der)
    assert crl.is_signature_valid(key.public_key())
    assert crl.issuer == x509.load_pem_x509_certificate(pem).subject
    assert crl.next_update_utc == NOW + timedelta(days=7)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    assert {r.serial_number for r in crl} == {0x1234, 0xABCDEF}
    entry = crl.get_revoked_certificate_by_serial_number(0x1234)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    (tmp_path / "ca.pem").write_bytes(pem)
    (tmp_path / "crl.der").write_bytes(crl_der)
    done = openssl("crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-noout",
                   "-CAfile", str(tmp_path / "ca.pem"))
    assert done.returncode == 0 and "verify OK" in done.stderr + done.stdout, done.stderr


def test_reason_names() -> None:
    assert icrl.reason("") == "unspecified"
    assert icrl.reason("KeyCompromise") == "keyCompromise"
    with pytest.raises(ix.Refused, match="not one of"):
        icrl.reason("because")

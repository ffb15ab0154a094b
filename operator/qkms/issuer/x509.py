"""The issuer's decisions, as small pure functions: no I/O, no clock, no provider.

- ``signature_algorithm``: the AlgorithmIdentifier a CA key signs with (Ed25519,
  ECDSA-P256 with SHA-256, RSASSA-PSS or PKCS#1 v1.5 with SHA-256, ML-DSA-44/65/87 of
  RFC 9881, composite ML-DSA-65+Ed25519 of the LAMPS draft ``crypto/hybrid.py`` follows).
- ``parse_csr``: a PKCS#10 request taken apart and its signature checked, for every key
  a CSR can carry here (RSA, ECDSA, Ed25519/Ed448, ML-DSA, the composite).
- (``policy.check_request``: a request against the issuer's policy.)
- ``leaf_tbs`` and ``ca_tbs``: the DER TBSCertificate to be signed; ``certificate``
  puts the provider's signature on it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from qkms.crypto import suite_for
from qkms.crypto.hybrid import COMPOSITE_OID

from . import der
from .errors import Refused
from .policy import EKU, KEY_USAGE_BITS, Decision

# -- algorithms ------------------------------------------------------------------------

SHA256 = "2.16.840.1.101.3.4.2.1"
RSA_PSS = "1.2.840.113549.1.1.10"
MGF1 = "1.2.840.113549.1.1.8"
SHA256_WITH_RSA = "1.2.840.113549.1.1.11"
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
ED25519 = "1.3.101.112"
ED448 = "1.3.101.113"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
MLDSA = {"ML-DSA-44": "2.16.840.1.101.3.4.3.17", "ML-DSA-65": "2.16.840.1.101.3.4.3.18",
         "ML-DSA-87": "2.16.840.1.101.3.4.3.19"}
"""RFC 9881: the same OID names the public key and the (pure) signature."""
COMPOSITE = {"Ed25519+ML-DSA-65": COMPOSITE_OID}
"""id-MLDSA65-Ed25519-SHA512: public key and signature, as in crypto/hybrid.py."""
SELF_SIGNING = {**MLDSA, **COMPOSITE, "Ed25519": ED25519}
"""Algorithms whose key OID in a SubjectPublicKeyInfo is also their signature OID."""

CA_ALGORITHMS = ("Ed25519", "ECDSA-P256", "RSA-2048", "RSA-4096", *MLDSA, *COMPOSITE)
"""What a CA key may be."""


_DER = Encoding.DER


def _hash_id() -> bytes:
    return der.sequence(der.oid(SHA256), der.null())


def signature_algorithm(ca_algorithm: str, rsa_scheme: str = "PSS") -> bytes:
    """The DER AlgorithmIdentifier of what the provider's SIGN gives for ``ca_algorithm``
    (RSA: PSS-SHA256, salt 32, or with ``rsa_scheme`` PKCS1v15 sha256WithRSAEncryption,
    the provider then asked for PKCS#1 v1.5; ECDSA over SHA-256 in DER)."""
    if ca_algorithm in SELF_SIGNING:
        return der.sequence(der.oid(SELF_SIGNING[ca_algorithm]))
    if ca_algorithm == "ECDSA-P256":
        return der.sequence(der.oid(ECDSA_SHA256))
    if ca_algorithm in ("RSA-2048", "RSA-4096"):
        if rsa_scheme == "PKCS1v15":  # RFC 4055: parameters NULL
            return der.sequence(der.oid(SHA256_WITH_RSA), der.null())
        params = der.sequence(
            der.explicit(0, _hash_id()),
            der.explicit(1, der.sequence(der.oid(MGF1), _hash_id())),
            der.explicit(2, der.integer(32)))
        return der.sequence(der.oid(RSA_PSS), params)
    raise Refused(f"a {ca_algorithm} key cannot sign certificates; CA keys may be "
                  f"{', '.join(CA_ALGORITHMS)}")


# -- SubjectPublicKeyInfo ------------------------------------------------------------

def spki_parts(spki_der: bytes) -> tuple[str, bytes]:
    """The algorithm OID and the subjectPublicKey bytes of a SubjectPublicKeyInfo."""
    algorithm, key = der.read_one(spki_der).children()
    return algorithm.children()[0].oid(), key.bits()


def key_identifier(spki_der: bytes) -> bytes:
    """RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits."""
    return hashlib.sha1(spki_parts(spki_der)[1], usedforsecurity=False).digest()


def _verifies_natively(spki_der: bytes, data: bytes, signature: bytes, sig_oid: str) -> bool:
    """Verify with qkms's own suites the keys ``cryptography``'s X.509 layer cannot:
    ML-DSA and the composite, whose signature OID must equal the key's."""
    key_oid, raw = spki_parts(spki_der)
    by_oid = {v: k for k, v in {**MLDSA, **COMPOSITE}.items()}
    name = by_oid.get(key_oid)
    if name is None:
        raise Refused(f"CSR key algorithm {key_oid} is not supported")
    if sig_oid != key_oid:
        raise Refused(f"CSR signature algorithm {sig_oid} does not match its {name} key")
    try:
        return suite_for(name).load_public(raw).verify(data, signature)
    except ValueError:
        raise Refused(f"CSR public key is not a valid {name} key") from None


def key_algorithm(spki_der: bytes) -> str:
    """A name for humans (and the audit) of a SubjectPublicKeyInfo's key."""
    key_oid, raw = spki_parts(spki_der)
    named = {v: k for k, v in {**MLDSA, **COMPOSITE, "Ed25519": ED25519, "Ed448": ED448}.items()}
    if key_oid in named:
        return named[key_oid]
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    try:
        key = load_der_public_key(spki_der)
    except (ValueError, UnsupportedAlgorithm):
        return key_oid
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA-{key.curve.name}"
    return key_oid


# -- CSRs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CSR:
    subject: x509.Name
    subject_der: bytes
    spki_der: bytes
    key_algorithm: str
    dns_names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    @property
    def common_name(self) -> str | None:
        names = self.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None

    def sans(self) -> list[str]:
        return [*(f"DNS:{n}" for n in self.dns_names), *(f"URI:{u}" for u in self.uris),
                *(f"IP:{i}" for i in self.ip_addresses), *(f"email:{e}" for e in self.emails)]


def parse_csr(pem: bytes) -> CSR:
    """A PEM PKCS#10 request, its signature checked; ``Refused`` says what is wrong."""
    try:
        request = x509.load_pem_x509_csr(pem)
        outer = der.read_one(request.public_bytes(_DER))
        info, sig_alg, sig = outer.children()
        _version, subject, spki, *_ = info.children()
        sig_oid = sig_alg.children()[0].oid()
        signature = sig.bits()
    except (ValueError, der.DerError, TypeError):
        raise Refused("spec.request is not a PEM certificate signing request") from None
    key_oid = spki_parts(spki.encoded)[0]
    if key_oid in (RSA_ENCRYPTION, EC_PUBLIC_KEY, ED25519, ED448):
        try:
            valid = request.is_signature_valid
        except UnsupportedAlgorithm:
            raise Refused("the CSR's signature algorithm is not supported") from None
        except ValueError:  # a signature that is not even well-formed
            valid = False
    else:
        valid = _verifies_natively(spki.encoded, info.encoded, signature, sig_oid)
    if not valid:
        raise Refused("the CSR's signature does not verify under its own public key")
    try:
        request_ext = request.extensions
        san = request_ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    except ValueError as exc:
        raise Refused(f"the CSR's extensions do not parse: {exc}") from None
    return CSR(
        subject=request.subject, subject_der=subject.encoded, spki_der=spki.encoded,
        key_algorithm=key_algorithm(spki.encoded),
        dns_names=tuple(san.get_values_for_type(x509.DNSName)),
        uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
        ip_addresses=tuple(str(i) for i in san.get_values_for_type(x509.IPAddress)),
        emails=tuple(san.get_values_for_type(x509.RFC822Name)),
    )


# -- TBSCertificate ---------------------------------------------------------------------

Extension = tuple[str, bool, bytes]  # OID, critical, DER value


def _extension(value: x509.ExtensionType, critical: bool) -> Extension:
    return (value.oid.dotted_string, critical, value.public_bytes())


def tbs_certificate(*, serial: int, signature_alg: bytes, issuer_der: bytes,
                    not_before: datetime, not_after: datetime, subject_der: bytes,
                    spki_der: bytes, extensions: Sequence[Extension]) -> bytes:
    """RFC 5280 4.1: a v3 TBSCertificate, DER."""
    if not 0 < serial < 2 ** 159:
        raise ValueError("serial must be positive and at most 20 octets")
    encoded = [der.sequence(der.oid(o), *([der.boolean(True)] if crit else []),
                            der.octet_string(v)) for o, crit, v in extensions]
    return der.sequence(
        der.explicit(0, der.integer(2)), der.integer(serial), signature_alg, issuer_der,
        der.sequence(der.time(not_before), der.time(not_after)), subject_der, spki_der,
        *([der.explicit(3, der.sequence(*encoded))] if encoded else []))


def certificate(tbs: bytes, signature_alg: bytes, signature: bytes) -> bytes:
    return der.sequence(tbs, signature_alg, der.bit_string(signature))


def to_pem(der_bytes: bytes, label: str = "CERTIFICATE") -> str:
    import base64
    body = base64.b64encode(der_bytes).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


@dataclass(frozen=True)
class CA:
    """What a leaf certificate takes from its CA certificate."""

    subject_der: bytes
    spki_der: bytes
    key_identifier: bytes
    not_after: datetime
    der: bytes = field(repr=False, default=b"")

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def read_ca(pem: bytes) -> CA:
    """A CA certificate (PEM) taken apart; ``Refused`` if it is not a usable CA."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        outer = der.read_one(cert.public_bytes(_DER))
        tbs = outer.children()[0].children()
        if tbs[0].tag == 0xA0:
            tbs = tbs[1:]
        _serial, _alg, _issuer, validity, subject, spki = tbs[:6]
        not_after = cert.not_valid_after_utc
    except (ValueError, der.DerError, IndexError):
        raise Refused("the CA certificate is not a PEM X.509 certificate") from None
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not basic.ca:
            raise Refused("the CA certificate is not a CA (basicConstraints CA:FALSE)")
    except x509.ExtensionNotFound:
        raise Refused("the CA certificate has no basicConstraints: not a CA") from None
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = key_identifier(spki.encoded)
    return CA(subject.encoded, spki.encoded, ski, not_after, outer.encoded)


def ca_subject(common_name: str, organization: Sequence[str] = ()) -> x509.Name:
    return x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ca_tbs(*, subject: x509.Name, spki_der: bytes, signature_alg: bytes, serial: int,
           now: datetime, duration: timedelta, path_length: int | None = None,
           permitted_dns: Sequence[str] = (), excluded_dns: Sequence[str] = ()) -> bytes:
    """A self-signed CA's TBSCertificate: the key certifies itself."""
    ski = key_identifier(spki_der)
    extensions = [
        _extension(x509.BasicConstraints(ca=True, path_length=path_length), True),
        _extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                 key_encipherment=False, data_encipherment=False,
                                 key_agreement=False, key_cert_sign=True, crl_sign=True,
                                 encipher_only=False, decipher_only=False), True),
        _extension(x509.SubjectKeyIdentifier(ski), False),
    ]
    if permitted_dns or excluded_dns:
        extensions.append(_extension(x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(d) for d in permitted_dns] or None,
            excluded_subtrees=[x509.DNSName(d) for d in excluded_dns] or None), True))
    name = subject.public_bytes()
    return tbs_certificate(serial=serial, signature_alg=signature_alg, issuer_der=name,
                           not_before=now - timedelta(minutes=5), not_after=now + duration,
                           subject_der=name, spki_der=spki_der, extensions=extensions)


def leaf_tbs(*, csr: CSR, ca: CA, decision: Decision, signature_alg: bytes, serial: int,
             now: datetime) -> bytes:
    """An end-entity TBSCertificate for ``csr`` under ``ca``; never outlives the CA."""
    bits = {v: False for v in KEY_USAGE_BITS.values()}
    for usage in decision.usages:
        if usage in KEY_USAGE_BITS:
            bits[KEY_USAGE_BITS[usage]] = True
    extensions = [_extension(x509.BasicConstraints(ca=False, path_length=None), True)]
    if any(bits.values()):
        agreement = bits["key_agreement"]
        bits["encipher_only"] &= agreement  # meaningful only with keyAgreement
        bits["decipher_only"] &= agreement
        extensions.append(_extension(x509.KeyUsage(key_cert_sign=False, crl_sign=False,
                                                   **bits), True))
    ekus = list(dict.fromkeys(EKU[u] for u in decision.usages if u in EKU))
    if ekus:
        extensions.append(_extension(x509.ExtendedKeyUsage(ekus), False))
    general: list[x509.GeneralName] = [
        *(x509.DNSName(n) for n in csr.dns_names),
        *(x509.UniformResourceIdentifier(u) for u in csr.uris),
        *(x509.IPAddress(ipaddress.ip_address(i)) for i in csr.ip_addresses),
        *(x509.RFC822Name(e) for e in csr.emails),
    ]
    if general:  # critical when the subject is empty (RFC 5280 4.2.1.6)
        extensions.append(_extension(x509.SubjectAlternativeName(general),
                                     not csr.subject.rdns))
    extensions.append(_extension(x509.SubjectKeyIdentifier(key_identifier(csr.spki_der)),
                                 False))
    extensions.append(_extension(x509.AuthorityKeyIdentifier(
        key_identifier=ca.key_identifier, authority_cert_issuer=None,
        authority_cert_serial_number=None), False))
    not_after = min(now + decision.duration, ca.not_after.astimezone(UTC))
    return tbs_certificate(serial=serial, signature_alg=signature_alg, issuer_der=ca.subject_der,
                           not_before=now - timedelta(minutes=5), not_after=not_after,
                           subject_der=csr.subject_der, spki_der=csr.spki_der,
                           extensions=extensions)


def serial_number(random_bytes: bytes) -> int:
    """A positive serial from 16 random bytes (RFC 5280: at most 20 octets, positive)."""
    return int.from_bytes(random_bytes[:16], "big") >> 1 or 1

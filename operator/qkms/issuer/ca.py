"""The CA's life across key rotations, as pure functions (no I/O, no clock, no provider).

- ``bridge_tbs``: a cross-signed bridge certificate's TBSCertificate: the new CA
  certificate's subject and public key, issued by the CA certificate it replaces and to be
  signed by that CA's (outgoing) key version, so that a client trusting only the old root
  verifies what the new one signs (RFC 4210 section 4.4's NewWithOld).
- ``certified_spki``: the SubjectPublicKeyInfo a TBSCertificate certifies (the service
  lets an outgoing version sign only a bridge to its own successor).
- ``bundle``: the PEM CA bundle, current first, without repeats or expired certificates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from cryptography import x509 as cx509

from . import der
from .errors import Refused
from .x509 import CA, _extension, key_identifier, tbs_certificate


def bridge_tbs(*, new: CA, old: CA, signature_alg: bytes, serial: int, now: datetime,
               path_length: int | None) -> bytes:
    """``new``'s subject and key certified by ``old`` (its issuer name and key identifier),
    valid while both are; ``signature_alg`` is what ``old``'s key signs with."""
    not_after = min(new.not_after, old.not_after).astimezone(UTC)
    if not_after <= now:
        raise Refused("the CA certificate being bridged from has expired")
    extensions = [
        _extension(cx509.BasicConstraints(ca=True, path_length=path_length), True),
        _extension(cx509.KeyUsage(digital_signature=True, content_commitment=False,
                                  key_encipherment=False, data_encipherment=False,
                                  key_agreement=False, key_cert_sign=True, crl_sign=True,
                                  encipher_only=False, decipher_only=False), True),
        _extension(cx509.SubjectKeyIdentifier(key_identifier(new.spki_der)), False),
        _extension(cx509.AuthorityKeyIdentifier(key_identifier=old.key_identifier,
                                                authority_cert_issuer=None,
                                                authority_cert_serial_number=None), False),
    ]
    return tbs_certificate(serial=serial, signature_alg=signature_alg,
                           issuer_der=old.subject_der, not_before=now - timedelta(minutes=5),
                           not_after=not_after, subject_der=new.subject_der,
                           spki_der=new.spki_der, extensions=extensions)


def certified_spki(tbs: bytes) -> bytes:
    """The subjectPublicKeyInfo (DER) of a DER TBSCertificate; ``Refused`` if it is not one."""
    try:
        fields = der.read_one(tbs).children()
        if fields and fields[0].tag == 0xA0:
            fields = fields[1:]
        spki = fields[5]
        if spki.tag != der.SEQUENCE:
            raise der.DerError("expected a SubjectPublicKeyInfo")
    except (der.DerError, IndexError):
        raise Refused("not a DER TBSCertificate") from None
    return spki.encoded


def path_length(pem: bytes) -> int | None:
    """The pathLenConstraint of a CA certificate (PEM)."""
    cert = cx509.load_pem_x509_certificate(pem)
    try:
        return cert.extensions.get_extension_for_class(cx509.BasicConstraints).value.path_length
    except cx509.ExtensionNotFound:
        return None


def expired(pem: str | bytes, now: datetime) -> bool:
    data = pem.encode() if isinstance(pem, str) else pem
    return cx509.load_pem_x509_certificate(data).not_valid_after_utc <= now


def bundle(pems: Iterable[str], now: datetime) -> str:
    """The certificates, in order, each once (by DER digest), the expired ones left out."""
    seen: set[str] = set()
    out = []
    for pem in pems:
        cert = cx509.load_pem_x509_certificate(pem.encode())
        digest = hashlib.sha256(cert.tbs_certificate_bytes + cert.signature).hexdigest()
        if digest in seen or cert.not_valid_after_utc <= now:
            continue
        seen.add(digest)
        out.append(pem if pem.endswith("\n") else pem + "\n")
    return "".join(out)

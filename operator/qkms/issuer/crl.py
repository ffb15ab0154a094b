"""An X.509 v2 CRL (RFC 5280 section 5), written here because the CA key never leaves its
provider: ``crl_tbs`` is the TBSCertList the provider signs, ``crl`` puts the signature on.

Entries carry their revocation date and, unless ``unspecified``, a reasonCode (RFC 5280
5.3.1); the list carries the CA's authorityKeyIdentifier and a cRLNumber.  An entry whose
certificate has expired is left out (5.1.2.6 allows it), so the list does not grow forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509 as cx509

from . import der
from .errors import Refused
from .x509 import CA

REASONS: dict[str, cx509.ReasonFlags] = {
    "unspecified": cx509.ReasonFlags.unspecified,
    "keyCompromise": cx509.ReasonFlags.key_compromise,
    "affiliationChanged": cx509.ReasonFlags.affiliation_changed,
    "superseded": cx509.ReasonFlags.superseded,
    "cessationOfOperation": cx509.ReasonFlags.cessation_of_operation,
    "certificateHold": cx509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": cx509.ReasonFlags.privilege_withdrawn,
}
"""RFC 5280's reason names (as cert-manager and OpenSSL spell them) qkms accepts."""


@dataclass(frozen=True)
class Entry:
    serial: int
    revoked_at: datetime
    reason: str = "unspecified"
    not_after: datetime | None = None


def reason(text: str | None) -> str:
    """A reason name from an annotation value: empty is ``unspecified``; ``Refused`` if
    it is not one of ``REASONS`` (case-insensitive)."""
    given = (text or "").strip()
    if not given:
        return "unspecified"
    for name in REASONS:
        if name.lower() == given.lower():
            return name
    raise Refused(f"revocation reason {given!r} is not one of {', '.join(REASONS)}")


def _extension(value: cx509.ExtensionType) -> bytes:
    return der.sequence(der.oid(value.oid.dotted_string), der.octet_string(value.public_bytes()))


def crl_tbs(*, ca: CA, signature_alg: bytes, this_update: datetime, next_update: datetime,
            number: int, entries: Iterable[Entry]) -> bytes:
    """RFC 5280 5.1.2: a v2 TBSCertList issued by ``ca``, entries that have not expired."""
    if next_update <= this_update:
        raise Refused("a CRL's nextUpdate must be after its thisUpdate")
    listed = sorted((e for e in entries if e.not_after is None or e.not_after > this_update),
                    key=lambda e: e.serial)
    revoked: Sequence[bytes] = [
        der.sequence(der.integer(e.serial), der.time(e.revoked_at),
                     *([der.sequence(_extension(cx509.CRLReason(REASONS[e.reason])))]
                       if e.reason != "unspecified" else []))
        for e in listed]
    extensions = der.sequence(
        _extension(cx509.AuthorityKeyIdentifier(key_identifier=ca.key_identifier,
                                                authority_cert_issuer=None,
                                                authority_cert_serial_number=None)),
        _extension(cx509.CRLNumber(number)))
    return der.sequence(
        der.integer(1), signature_alg, ca.subject_der, der.time(this_update),
        der.time(next_update), *([der.sequence(*revoked)] if revoked else []),
        der.explicit(0, extensions))


def crl(tbs: bytes, signature_alg: bytes, signature: bytes) -> bytes:
    return der.sequence(tbs, signature_alg, der.bit_string(signature))

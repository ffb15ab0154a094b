"""The issuer's policy for a request: names, duration and usages, as pure functions.

``check_request`` takes a parsed CSR (``x509.parse_csr``) and the issuer's ``Rules`` and
returns the ``Decision`` that ``x509.leaf_tbs`` builds the certificate from, or raises
``Refused`` naming the field; the names are matched as cert-manager's own issuers do.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from .errors import Refused

if TYPE_CHECKING:
    from .x509 import CSR

_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")


def go_duration(text: str) -> timedelta:
    """A Go duration as cert-manager writes spec.duration ("2160h0m0s")."""
    text = text.strip()
    parts = _GO_PART.findall(text)
    if not text or "".join(a + b for a, b in parts) != text:
        raise Refused(f"spec.duration {text!r} is not a duration")
    return timedelta(seconds=sum(float(n) * _GO_UNITS[u] for n, u in parts))


def dns_allowed(name: str, patterns: Sequence[str]) -> bool:
    """Exact names, or '*' standing for the characters of one label."""
    name = name.lower().rstrip(".")
    for pattern in patterns:
        regex = "[^.]*".join(re.escape(p) for p in pattern.lower().rstrip(".").split("*"))
        if re.fullmatch(regex, name):
            return True
    return False


def glob_allowed(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def ip_allowed(value: str, ranges: Sequence[str]) -> bool:
    address = ipaddress.ip_address(value)
    return any(address in ipaddress.ip_network(r, strict=False) for r in ranges)


KEY_USAGE_BITS = {
    "signing": "digital_signature", "digital signature": "digital_signature",
    "content commitment": "content_commitment", "key encipherment": "key_encipherment",
    "key agreement": "key_agreement", "data encipherment": "data_encipherment",
    "encipher only": "encipher_only", "decipher only": "decipher_only",
}
EKU = {
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "s/mime": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec end system": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.5"),
    "ipsec tunnel": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.6"),
    "ipsec user": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}


@dataclass(frozen=True)
class Rules:
    """The issuer's policy, in plain values (``IssuancePolicy`` parsed)."""

    default_duration: timedelta
    max_duration: timedelta
    default_usages: tuple[str, ...]
    dns: tuple[str, ...] | None = None
    uris: tuple[str, ...] | None = None
    ip_ranges: tuple[str, ...] | None = None
    emails: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Decision:
    duration: timedelta
    usages: tuple[str, ...]


def check_request(csr: CSR, rules: Rules, *, duration: timedelta | None,
                  usages: Sequence[str], is_ca: bool) -> Decision:
    """Whether the issuer may sign this request, and with what duration and usages."""
    if is_ca:
        raise Refused("spec.isCA: a qkms issuer issues end-entity certificates only")
    if not csr.sans() and not csr.common_name:
        raise Refused("the CSR names no subject and no subjectAltName")
    names: list[tuple[str, str, tuple[str, ...] | None, bool]] = [
        *(("DNS name", n, rules.dns, dns_allowed(n, rules.dns or ())) for n in csr.dns_names),
        *(("URI", u, rules.uris, glob_allowed(u, rules.uris or ())) for u in csr.uris),
        *(("IP address", i, rules.ip_ranges, ip_allowed(i, rules.ip_ranges or ()))
          for i in csr.ip_addresses),
        *(("email address", e, rules.emails, glob_allowed(e, rules.emails or ()))
          for e in csr.emails),
    ]
    cn = csr.common_name
    if cn is not None and rules.dns is not None and cn not in csr.dns_names:
        names.append(("commonName", cn, rules.dns, dns_allowed(cn, rules.dns)))
    for what, value, allowed, ok in names:
        if allowed is not None and not ok:
            raise Refused(f"{what} {value!r} is not allowed by the issuer "
                          f"(allowed: {', '.join(allowed) or 'none'})")
    wanted = duration if duration is not None else rules.default_duration
    if wanted <= timedelta(0):
        raise Refused("spec.duration must be positive")
    if wanted > rules.max_duration:
        raise Refused(f"spec.duration {_hours(wanted)} is above the issuer's maximum "
                      f"{_hours(rules.max_duration)}")
    chosen = tuple(dict.fromkeys(usages)) or rules.default_usages
    unknown = [u for u in chosen if u not in KEY_USAGE_BITS and u not in EKU]
    if unknown:
        raise Refused(f"spec.usages {', '.join(unknown)} cannot be issued "
                      "(end-entity certificates only)")
    return Decision(wanted, chosen)


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:g}h"

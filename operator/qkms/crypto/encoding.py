"""Public-key encodings shared by the suites: base64url, SPKI DER/PEM, JWK.

Most suites get SPKI from ``cryptography``; the few it cannot serialize
(ML-KEM-512, the composite signature, X-Wing) are all "OID + raw key bytes
in a BIT STRING, parameters absent", which a ten-line DER writer covers
without pulling an ASN.1 library into the runtime.
"""

from __future__ import annotations

import base64
import textwrap


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2), the encoding every JWK member uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(value)) + value


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


def spki_der(oid: str, public_key: bytes) -> bytes:
    """SubjectPublicKeyInfo with parameters absent and the raw key as the BIT STRING.

    This is the shape the NIST PQC OIDs (ML-KEM, ML-DSA), the LAMPS composite
    signatures and X-Wing all specify.
    """
    algorithm = _tlv(0x30, _oid(oid))
    bit_string = _tlv(0x03, b"\x00" + public_key)
    return _tlv(0x30, algorithm + bit_string)


def pem(der: bytes, label: str = "PUBLIC KEY") -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def jwk(kid: str, kty: str, alg: str, **members: str) -> dict:
    """A public JWK: fixed members first, key members as given, values already encoded."""
    return {"kty": kty, "kid": kid, "alg": alg, **members}

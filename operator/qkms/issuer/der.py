"""Just enough DER to assemble X.509 structures and take CSRs and certificates apart.

``cryptography`` builds and signs certificates only with private keys it holds, and
not at all with ML-DSA or composite keys.  qkms signs with keys that never leave their
provider, so it writes the TBSCertificate itself: the pieces that ``cryptography`` can
encode (names, extension values) come from it as DER, and the rest (the sequence
around them, times, integers, algorithm identifiers) is written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

SEQUENCE, SET, INTEGER, BIT_STRING, OCTET_STRING, NULL, OID = 0x30, 0x31, 0x02, 0x03, 0x04, \
    0x05, 0x06
BOOLEAN, UTC_TIME, GENERALIZED_TIME = 0x01, 0x17, 0x18


class DerError(ValueError):
    """Not the DER expected."""


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def sequence(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("only non-negative integers are written")
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return tlv(INTEGER, body)


def boolean(value: bool) -> bytes:
    return tlv(BOOLEAN, b"\xff" if value else b"\x00")


def null() -> bytes:
    return tlv(NULL, b"")


def octet_string(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def bit_string(value: bytes) -> bytes:
    return tlv(BIT_STRING, b"\x00" + value)


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    if len(parts) < 2 or parts[0] > 2:
        raise ValueError(f"not an OID: {dotted}")
    out = bytearray()
    for arc in [parts[0] * 40 + parts[1], *parts[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return tlv(OID, bytes(out))


def explicit(number: int, content: bytes) -> bytes:
    """A constructed context-specific tag [number] around ``content``."""
    return tlv(0xA0 | number, content)


def time(moment: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, whole seconds, Z."""
    moment = moment.astimezone(UTC)
    if moment.year < 2050:
        return tlv(UTC_TIME, moment.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(GENERALIZED_TIME, moment.strftime("%Y%m%d%H%M%SZ").encode())


# -- reading ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Element:
    tag: int
    content: bytes
    encoded: bytes  # the whole TLV

    def children(self) -> list[Element]:
        return read_all(self.content)

    def oid(self) -> str:
        if self.tag != OID:
            raise DerError("expected an OBJECT IDENTIFIER")
        arcs, value = [], 0
        for byte in self.content:
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                arcs.append(value)
                value = 0
        first = min(arcs[0] // 40, 2)
        return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])

    def bits(self) -> bytes:
        if self.tag != BIT_STRING or not self.content or self.content[0] != 0:
            raise DerError("expected a BIT STRING of whole bytes")
        return self.content[1:]


def read(data: bytes, offset: int = 0) -> tuple[Element, int]:
    """One TLV at ``offset``, and the offset after it."""
    try:
        tag, first = data[offset], data[offset + 1]
        if tag & 0x1F == 0x1F:
            raise DerError("multi-byte tags are not used in X.509")
        start = offset + 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 4:
                raise DerError("bad DER length")
            length = int.from_bytes(data[start:start + count], "big")
            start += count
    except IndexError:
        raise DerError("truncated DER") from None
    end = start + length
    if end > len(data):
        raise DerError("truncated DER")
    return Element(tag, bytes(data[start:end]), bytes(data[offset:end])), end


def read_one(data: bytes) -> Element:
    element, end = read(data)
    if end != len(data):
        raise DerError("trailing bytes after the DER value")
    return element


def read_all(data: bytes) -> list[Element]:
    items, offset = [], 0
    while offset < len(data):
        item, offset = read(data, offset)
        items.append(item)
    return items

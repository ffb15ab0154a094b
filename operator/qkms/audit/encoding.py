"""Audit blocks as canonical DAG-CBOR, addressed by CIDv1 (dag-cbor, sha2-256, base32).

Encoding and decoding are ``libipld``'s (a binding to the Rust IPLD
libraries).  ``tests/audit/test_audit_encoding.py`` checks with Hypothesis
that ``encode`` is byte-identical to the ``dag-cbor`` package and that
``decode`` agrees with it; ``verify --deep`` decodes every block strictly and
re-encodes it, and the Node test recomputes every CID with ``@ipld/dag-cbor``.

libipld has no CID type: it decodes a link to its raw bytes, and encodes a
``bytes`` value as a link whenever the bytes parse as a CID, which about one
random byte string in a thousand does.  So here a link is written as
``Link`` (raw CID bytes); ``encode`` keeps every other ``bytes`` value a byte
string whatever it holds (a checkpoint's signature or public key may look
like a CID); and ``decode`` gives ``Link`` for the fields audit blocks link
through (``prev``, ``head``, ``previous``).

Entry keys are named so that canonical order (shorter keys first, then
bytewise) puts ``seq`` and ``prev`` at the front of every entry: the verifier
reads a block's position in the chain from a fixed prefix without decoding
the rest (see ``entry_prefix``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from libipld import decode_dag_cbor, encode_cid, encode_dag_cbor

from .entry import Actor, AuditEntry

CID_PREFIX = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor (0x71), sha2-256 (0x12), 32 bytes
CID_LENGTH = 36
ENTRY_TYPE = "entry"
CHECKPOINT_TYPE = "qkms.audit.checkpoint.v1"
LINK_KEYS = ("prev", "head", "previous")
_LINK_HEAD = b"\xd8\x2a\x58\x25\x00"  # tag 42, bytes(37), identity multibase prefix


class Link(bytes):
    """A CID link held as its raw binary form (36 bytes for our CIDs)."""

    def __str__(self) -> str:
        return cid_str(self)

    def __repr__(self) -> str:
        return f"Link({cid_str(self)})"


def cid_raw(block: bytes) -> bytes:
    """The binary CIDv1 of a dag-cbor block."""
    return CID_PREFIX + hashlib.sha256(block).digest()


def cid_str(raw: bytes) -> str:
    """Base32 (multibase ``b``) text of a binary CIDv1, as IPFS prints it."""
    return encode_cid(bytes(raw))


# -- encoding -------------------------------------------------------------------------

def _is_link(data: bytes) -> bool:
    """Whether libipld writes these bytes as a link (tag 42) rather than a byte string."""
    return len(data) >= 4 and encode_dag_cbor(bytes(data))[0] == 0xD8


def _disguise(value: Any, flip: int, found: list[int]) -> Any:
    """``value`` with the first byte of every link-like plain ``bytes`` XORed with ``flip``
    (so libipld writes it as a byte string); ``found`` counts them."""
    kind = type(value)
    if kind is dict:
        return {k: _disguise(v, flip, found) for k, v in value.items()}
    if kind is list:
        return [_disguise(v, flip, found) for v in value]
    if kind is Link:
        if not _is_link(value):
            raise ValueError(f"{bytes(value)!r} is not a CID")
        return value
    if isinstance(value, bytes) and _is_link(value):
        found.append(1)
        return bytes((value[0] ^ flip,)) + value[1:]
    return value


def encode(value: Any) -> bytes:
    """Canonical DAG-CBOR of ``value`` (byte-identical to ``dag_cbor.encode``): ``Link``
    values are links, other ``bytes`` byte strings.

    A byte string libipld would mistake for a CID is encoded twice with its first
    byte changed in two ways that do not parse as a CID (0x01 becomes 0x00 and 0x02;
    0x12 becomes 0x13 and 0x11); the two encodings differ exactly at those bytes,
    which are then put back.
    """
    found: list[int] = []
    first = encode_dag_cbor(_disguise(value, 0x01, found))
    if not found:
        return first
    second = encode_dag_cbor(_disguise(value, 0x03, []))
    out = bytearray(first)
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        if a != b:
            out[i] = a ^ 0x01
    return bytes(out)


def decode(block: bytes) -> Any:
    """The value of a DAG-CBOR block (``ValueError`` if it is not strict DAG-CBOR);
    ``prev``, ``head`` and ``previous`` of a map come back as ``Link``."""
    value = decode_dag_cbor(block)
    if type(value) is dict:
        for key in LINK_KEYS:
            link = value.get(key)
            if type(link) is bytes:
                value[key] = Link(link)
    return value


_TAG_LINK = b"\xd8\x2a"  # tag 42 (a link) as canonical DAG-CBOR writes it


def entry_reencodes(block: bytes, value: dict[str, Any]) -> bool:
    """Whether ``encode(decode(block)) == block`` for an entry, given ``value``, the block
    as plain ``decode_dag_cbor`` returns it (``prev`` as bytes): the canonical form.

    The fast path is libipld alone: its output equals ``encode``'s when the block's one
    link is ``prev`` (no more tag 42 bytes than that; libipld would write any other
    CID-like bytes as a link too).  An entry holding CID-like bytes where text belongs,
    or any other pair of tag 42 bytes, is settled by ``encode`` itself.
    """
    prev = value.get("prev")
    if block.count(_TAG_LINK) == (prev is not None) and encode_dag_cbor(value) == block:
        return True
    if prev is not None:
        value = {**value, "prev": Link(prev)}
    return encode(value) == block


# -- entries ------------------------------------------------------------------------------

def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``: one spelling per instant (naive is UTC).
    The last one is kept: a batch's entries share their time."""
    global _LAST_TIME
    last = _LAST_TIME  # one tuple, read once: safe with other threads formatting
    if moment is last[0]:
        return last[1]
    _LAST_TIME = moment, _format_time(moment)
    return _LAST_TIME[1]


_LAST_TIME: tuple[datetime | None, str] = (None, "")


_LAST_SECOND: tuple[tuple[int, ...] | None, str] = (None, "")


def _format_time(moment: datetime) -> str:
    global _LAST_SECOND
    if moment.tzinfo is UTC:  # the usual case: a second's text is made once, then reused
        second = (moment.second, moment.minute, moment.hour, moment.day, moment.month,
                  moment.year)
        last = _LAST_SECOND
        if second != last[0]:
            last = _LAST_SECOND = second, moment.isoformat(timespec="seconds")[:-6]
        return f"{last[1]}.{moment.microsecond:06d}Z"
    text = moment.isoformat(timespec="microseconds")
    if text.endswith("+00:00"):
        return text[:-6] + "Z"
    if moment.tzinfo is None:
        return text + "Z"
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _texts(mapping: dict[str, Any]) -> dict[str, str]:
    """The mapping with keys and values as text (itself when they already are)."""
    for key, value in mapping.items():
        if type(key) is not str or type(value) is not str:
            return {str(k): v if type(v) is str else str(v) for k, v in mapping.items()}
    return mapping


def entry_value(entry: AuditEntry, seq: int, prev: bytes | None,
                link: Callable[[bytes], bytes] = Link) -> dict[str, Any]:
    """The data model of one entry block; never data or key material, only digests."""
    return {
        "seq": seq,
        "prev": None if prev is None else link(prev),
        "time": format_time(entry.time),
        "type": ENTRY_TYPE,
        "actor": {"id": entry.actor.id, "type": entry.actor.type},
        "keyId": entry.key_id,
        "reason": entry.reason,
        "result": entry.result,
        "details": _texts(entry.details) if entry.details else {},
        "digests": _texts(entry.digests) if entry.digests else {},
        "keyName": entry.key_name,
        "operation": entry.operation,
        "keyVersion": entry.version,
        "environment": entry.environment,
    }


ENTRY_KEYS = frozenset(entry_value(AuditEntry(datetime(2000, 1, 1), "", "", ""), 0, None))


def encode_entry(entry: AuditEntry, seq: int, prev: bytes | None) -> bytes:
    """``encode(entry_value(...))``; straight to libipld when no field holds bytes."""
    actor = entry.actor
    if bytes in (type(entry.key_id), type(entry.reason), type(entry.result),
                 type(entry.key_name), type(entry.operation), type(entry.environment),
                 type(entry.version), type(actor.id), type(actor.type)):
        # bytes where text belongs: keep them a byte string
        return encode(entry_value(entry, seq, prev))
    # prev as plain bytes: a CID's, which libipld writes as the link ``Link`` stands for
    return encode_dag_cbor(entry_value(entry, seq, prev, link=bytes))


def entry_from_value(value: dict[str, Any], cid: str | None = None) -> AuditEntry:
    """The ``AuditEntry`` a decoded entry block describes."""
    actor = value.get("actor") or {}
    return AuditEntry(
        time=parse_time(value["time"]), environment=value["environment"],
        operation=value["operation"], result=value["result"],
        actor=Actor(type=str(actor.get("type", "")), id=str(actor.get("id", ""))),
        key_name=value.get("keyName"), key_id=value.get("keyId"),
        version=value.get("keyVersion"), reason=value.get("reason"),
        digests=dict(value.get("digests") or {}), details=dict(value.get("details") or {}),
        sequence=value["seq"], cid=cid,
    )


_ENTRY_START = b"\x63seq"
_PREV_KEY = b"\x64prev"


def is_entry(block: bytes) -> bool:
    """Entries open with the key ``seq``; checkpoints with ``head``."""
    return block[1:5] == _ENTRY_START


def entry_prefix(block: bytes) -> tuple[int, bytes | None]:
    """(seq, prev CID bytes) from an entry's canonical prefix, without a full decode."""
    first = block[5]
    if first >> 5 != 0:
        raise ValueError("seq is not an unsigned integer")
    info = first & 31
    if info < 24:
        seq, pos = info, 6
    elif info < 28:
        size = 1 << (info - 24)
        seq, pos = int.from_bytes(block[6:6 + size], "big"), 6 + size
    else:
        raise ValueError("seq is not an unsigned integer")
    if block[pos:pos + 5] != _PREV_KEY:
        raise ValueError("prev does not follow seq")
    pos += 5
    if block[pos] == 0xF6:
        return seq, None
    if block[pos:pos + 5] != _LINK_HEAD:
        raise ValueError("prev is not a CID link")
    return seq, block[pos + 5:pos + 5 + CID_LENGTH]


# -- checkpoints ---------------------------------------------------------------------------

def checkpoint_body(size: int, head: bytes, time: datetime, previous: bytes | None) -> bytes:
    """The canonical bytes a checkpoint's signature covers."""
    return encode(_checkpoint_value(size, head, time, previous))


def _checkpoint_value(size: int, head: bytes, time: datetime,
                      previous: bytes | None) -> dict[str, Any]:
    return {"head": Link(head), "size": size, "time": format_time(time), "type": CHECKPOINT_TYPE,
            "previous": None if previous is None else Link(previous)}


def encode_checkpoint(size: int, head: bytes, time: datetime, previous: bytes | None,
                      signature: bytes, key_id: str, algorithm: str, public_key: bytes) -> bytes:
    value = _checkpoint_value(size, head, time, previous)
    value["signer"] = {"keyId": key_id, "algorithm": algorithm, "publicKey": bytes(public_key)}
    value["signature"] = bytes(signature)
    return encode(value)


def signed_part(value: dict[str, Any]) -> bytes:
    """Re-create the signed body from a decoded checkpoint block."""
    return encode({k: v for k, v in value.items() if k not in ("signer", "signature")})


# -- CARv1 sections (also the on-disk record form) ---------------------------------------

def varint(n: int) -> bytes:
    if n < 0x4000:  # every entry's section: one or two bytes, without the loop
        return bytes((n,)) if n < 0x80 else bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, next position); raises IndexError when the data ends inside it."""
    n = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def section(raw_cid: bytes, block: bytes) -> bytes:
    """One CARv1 section (varint length, CID, block): also the on-disk record form."""
    return varint(len(raw_cid) + len(block)) + raw_cid + block

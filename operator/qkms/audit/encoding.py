"""Audit blocks as canonical DAG-CBOR, addressed by CIDv1 (dag-cbor, sha2-256, base32).

Why a hand-written encoder next to the ``dag-cbor`` package: the package is
pure Python and general, about 55 µs to encode and 150 µs to decode one entry,
which alone would cap the log below its 20,000 entries/s target.  Audit
blocks use a small subset of the data model (maps with text keys, text,
unsigned and negative integers, bytes, lists, null, booleans, CID links), so
``encode``/``decode`` here handle exactly that subset and hand anything else
to the package.  ``tests/audit/test_encoding.py`` checks with Hypothesis that
the bytes are identical to ``dag_cbor.encode`` and that ``decode`` agrees with
``dag_cbor.decode``; ``verify --deep`` re-checks every stored block with the
package itself, and the Node test recomputes every CID with ``@ipld/dag-cbor``.

Entry keys are named so that canonical order (shorter keys first, then
bytewise) puts ``seq`` and ``prev`` at the front of every entry: the verifier
reads a block's position in the chain from a fixed prefix without decoding
the rest (see ``entry_prefix``).  CIDs are handled as their 36 raw bytes
(version, codec, multihash) in hot paths; ``multiformats.CID`` is used only at
the edges.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dag_cbor
from multiformats import CID

from .entry import Actor, AuditEntry

CID_PREFIX = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor (0x71), sha2-256 (0x12), 32 bytes
CID_LENGTH = 36
ENTRY_TYPE = "entry"
CHECKPOINT_TYPE = "qkms.audit.checkpoint.v1"
_LINK_HEAD = b"\xd8\x2a\x58\x25\x00"  # tag 42, bytes(37), identity multibase prefix
_NULL = b"\xf6"


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
    if len(raw) != CID_LENGTH or raw[:1] != b"\x01":
        return str(CID.decode(bytes(raw)))
    n = int.from_bytes(raw, "big") << 32  # 288 bits padded to 320: 32 ten-bit groups
    return "b" + "".join([_B32_PAIRS[(n >> shift) & 1023] for shift in _SHIFTS])[:58]


_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [_B32[i >> 5] + _B32[i & 31] for i in range(1024)]
_SHIFTS = range(310, -1, -10)


def cid_parse(text: str) -> bytes:
    """Binary form of a CID given as text (base32 fast path, any multibase otherwise)."""
    if text.startswith("b"):
        body = text[1:].upper()
        try:
            return base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError:
            pass
    return bytes(CID.decode(text))


# -- encoding -------------------------------------------------------------------------

def _head(major: int, n: int) -> bytes:
    if 0 <= n < 256:
        return _SMALL_HEADS[major][n]
    return _long_head(major, n)


def _long_head(major: int, n: int) -> bytes:
    if n < 0:
        raise ValueError("a CBOR length or unsigned integer cannot be negative")
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    if n < 0x10000000000000000:
        return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")
    raise ValueError("integer out of the DAG-CBOR range")


_SMALL_HEADS = [[_long_head(m, n) for n in range(256)] for m in range(8)]


def _key_order(key: bytes) -> tuple[int, bytes]:
    return len(key), key


def _encode(value: Any, out: list[bytes]) -> None:
    kind = type(value)
    if kind is str:
        data = value.encode()
        out.append(_head(3, len(data)))
        out.append(data)
    elif kind is int:
        out.append(_head(0, value) if value >= 0 else _head(1, -1 - value))
    elif value is None:
        out.append(_NULL)
    elif kind is Link:
        out.append(_head(6, 42) + _head(2, len(value) + 1) + b"\x00")
        out.append(value)
    elif kind is dict:
        if not value:
            out.append(b"\xa0")
            return
        keys = sorted(((k.encode(), k) for k in value), key=lambda p: _key_order(p[0]))
        out.append(_head(5, len(keys)))
        for raw, key in keys:
            out.append(_head(3, len(raw)))
            out.append(raw)
            _encode(value[key], out)
    elif kind is bytes:
        out.append(_head(2, len(value)))
        out.append(value)
    elif kind is bool:
        out.append(b"\xf5" if value else b"\xf4")
    elif kind is list:
        out.append(_head(4, len(value)))
        for item in value:
            _encode(item, out)
    else:
        raise TypeError(kind.__name__)


def encode(value: Any) -> bytes:
    """Canonical DAG-CBOR of ``value`` (byte-identical to ``dag_cbor.encode``)."""
    out: list[bytes] = []
    try:
        _encode(value, out)
    except TypeError:
        return dag_cbor.encode(_to_package(value))
    return b"".join(out)


def _to_package(value: Any) -> Any:
    """The same value with ``Link`` turned into ``multiformats.CID`` for the package."""
    if isinstance(value, Link):
        return CID.decode(bytes(value))
    if isinstance(value, dict):
        return {k: _to_package(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_package(v) for v in value]
    return value


def from_package(value: Any) -> Any:
    """A value decoded by ``dag_cbor`` with CIDs turned into ``Link`` (for comparisons)."""
    if isinstance(value, CID):
        return Link(bytes(value))
    if isinstance(value, dict):
        return {k: from_package(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_package(v) for v in value]
    return value


# -- decoding ---------------------------------------------------------------------------

class _Unsupported(Exception):
    pass


def _length(block: bytes, info: int, pos: int) -> tuple[int, int]:
    if info < 24:
        return info, pos
    if info == 24:
        return block[pos], pos + 1
    size = {25: 2, 26: 4, 27: 8}.get(info)
    if size is None:
        raise _Unsupported
    return int.from_bytes(block[pos:pos + size], "big"), pos + size


def _decode(block: bytes, pos: int) -> tuple[Any, int]:
    first = block[pos]
    major, info = first >> 5, first & 31
    pos += 1
    if major == 7:
        if info == 22:
            return None, pos
        if info in (20, 21):
            return info == 21, pos
        if info == 27:
            return struct.unpack(">d", block[pos:pos + 8])[0], pos + 8
        raise _Unsupported
    n, pos = _length(block, info, pos)
    if major == 3:
        return block[pos:pos + n].decode(), pos + n
    if major == 0:
        return n, pos
    if major == 5:
        result = {}
        for _ in range(n):
            key, pos = _decode(block, pos)
            result[key], pos = _decode(block, pos)
        return result, pos
    if major == 2:
        return block[pos:pos + n], pos + n
    if major == 1:
        return -1 - n, pos
    if major == 4:
        items = []
        for _ in range(n):
            item, pos = _decode(block, pos)
            items.append(item)
        return items, pos
    if major == 6 and n == 42:
        raw, pos = _decode(block, pos)
        return Link(raw[1:]), pos
    raise _Unsupported


def decode(block: bytes) -> Any:
    """Decode a block produced by ``encode`` (links as ``Link``); others via the package.

    This trusts the block to be canonical: the chain verifier checks every
    block's hash before anything decodes it, and ``verify --deep`` checks
    canonical form with the package.
    """
    try:
        value, end = _decode(block, 0)
        if end == len(block):
            return value
    except (_Unsupported, IndexError, UnicodeDecodeError, struct.error):
        pass
    return from_package(dag_cbor.decode(block))


# -- entries ------------------------------------------------------------------------------

def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``: one spelling per instant."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _texts(mapping: dict[str, Any]) -> dict[str, str]:
    return {str(k): v if type(v) is str else str(v) for k, v in mapping.items()}


def entry_value(entry: AuditEntry, seq: int, prev: bytes | None) -> dict[str, Any]:
    """The data model of one entry block; never data or key material, only digests."""
    return {
        "seq": seq,
        "prev": None if prev is None else Link(prev),
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


_ENTRY_KEYS = sorted(entry_value(AuditEntry(datetime(2000, 1, 1), "", "", ""), 0, None),
                     key=lambda k: _key_order(k.encode()))
_K = {k: _head(3, len(k)) + k.encode() for k in _ENTRY_KEYS}
_ENTRY_HEAD = _head(5, len(_ENTRY_KEYS))
_TYPE_ENTRY = _K["type"] + _head(3, len(ENTRY_TYPE)) + ENTRY_TYPE.encode()
_ACTOR_ID = _head(5, 2) + _head(3, 2) + b"id"
_ACTOR_TYPE = _head(3, 4) + b"type"


def _text(value: str | None) -> bytes:
    if value is None:
        return _NULL
    if type(value) is not str:
        raise TypeError("not text")
    data = value.encode()
    size = len(data)
    return (_SMALL_HEADS[3][size] if size < 256 else _long_head(3, size)) + data


def _map(value: dict[str, Any]) -> bytes:
    if not value:
        return b"\xa0"
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def encode_entry(entry: AuditEntry, seq: int, prev: bytes | None) -> bytes:
    """``encode(entry_value(...))`` written out in canonical key order (the hot path)."""
    try:
        version = entry.version
        return b"".join((
            _ENTRY_HEAD, _K["seq"], _head(0, seq),
            _K["prev"], _NULL if prev is None else _LINK_HEAD + prev,
            _K["time"], _text(format_time(entry.time)), _TYPE_ENTRY,
            _K["actor"], _ACTOR_ID, _text(entry.actor.id), _ACTOR_TYPE, _text(entry.actor.type),
            _K["keyId"], _text(entry.key_id), _K["reason"], _text(entry.reason),
            _K["result"], _text(entry.result),
            _K["details"], _map(_texts(entry.details)) if entry.details else b"\xa0",
            _K["digests"], _map(_texts(entry.digests)) if entry.digests else b"\xa0",
            _K["keyName"], _text(entry.key_name), _K["operation"], _text(entry.operation),
            _K["keyVersion"], _NULL if version is None else _head(0, version),
            _K["environment"], _text(entry.environment),
        ))
    except (TypeError, ValueError, OverflowError):
        return encode(entry_value(entry, seq, prev))


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
    info = block[5] & 31
    if block[5] >> 5 != 0:
        raise ValueError("seq is not an unsigned integer")
    seq, pos = _length(block, info, 6)
    if block[pos:pos + 5] != _PREV_KEY:
        raise ValueError("prev does not follow seq")
    pos += 5
    if block[pos] == 0xF6:
        return seq, None
    if block[pos:pos + 5] != _LINK_HEAD:
        raise ValueError("prev is not a CID link")
    return seq, block[pos + 5:pos + 5 + CID_LENGTH]


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
    value["signer"] = {"keyId": key_id, "algorithm": algorithm, "publicKey": public_key}
    value["signature"] = signature
    return encode(value)


def signed_part(value: dict[str, Any]) -> bytes:
    """Re-create the signed body from a decoded checkpoint block."""
    return encode({k: v for k, v in value.items() if k not in ("signer", "signature")})


def varint(n: int) -> bytes:
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


Decoder = Callable[[bytes], Any]

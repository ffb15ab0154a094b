"""The libipld-based codec against the dag-cbor package (pure Python, a second
implementation), and CIDs against multiformats and py-cid (an independent Python
implementation of CIDs and multihash)."""

from __future__ import annotations

import hashlib
import os

import dag_cbor
from hypothesis import given, settings
from hypothesis import strategies as st
from libipld import decode_dag_cbor, encode_dag_cbor
from multiformats import CID, multihash

from qkms.audit import encoding
from qkms.audit.encoding import Link, cid_raw, cid_str
from tests.audit.helpers import make_entry


def to_package(value):
    """The same value with ``Link`` turned into ``multiformats.CID`` for the package."""
    if isinstance(value, Link):
        return CID.decode(bytes(value))
    if isinstance(value, dict):
        return {k: to_package(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_package(v) for v in value]
    return value


def from_package(value):
    """A value decoded by the package with its CIDs as raw bytes, as libipld gives them."""
    if isinstance(value, CID):
        return bytes(value)
    if isinstance(value, dict):
        return {k: from_package(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_package(v) for v in value]
    return value


links = st.binary(min_size=32, max_size=32).map(lambda d: Link(encoding.CID_PREFIX + d))
# Byte strings that parse as CIDs, which libipld alone would write as links.
cid_like = (st.tuples(st.sampled_from([b"\x01", b"\x01\x55", b"\x01\x71\x12\x20"]),
                      st.binary(min_size=3, max_size=80)).map(b"".join)
            | st.binary(min_size=32, max_size=32).map(lambda d: b"\x12\x20" + d))
# No -0.0: libipld writes it as 0.0 and refuses it when decoding; audit blocks hold no floats.
floats = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: str(f) != "-0.0")
scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text()
           | st.binary() | cid_like | links | floats)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(values)
def test_encode_is_byte_identical_to_the_dag_cbor_package(value):
    ours = encoding.encode(value)
    assert ours == dag_cbor.encode(to_package(value))
    assert encoding.decode(ours) == from_package(dag_cbor.decode(ours))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=64, max_size=64), st.binary(min_size=32, max_size=32) | cid_like,
       st.binary(min_size=32, max_size=32))
def test_checkpoints_keep_byte_strings_that_look_like_cids(signature, public_key, head):
    """One random byte string in about a thousand parses as a CID; a checkpoint's signature
    or public key must stay a byte string all the same, and parse back to what was signed."""
    from datetime import UTC, datetime

    from qkms.audit.checkpoint import parse_checkpoint

    head = encoding.CID_PREFIX + head
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    block = encoding.encode_checkpoint(7, head, moment, None, signature, "k", "alg",
                                       public_key)
    value = {"head": CID.decode(head), "size": 7, "time": encoding.format_time(moment),
             "type": encoding.CHECKPOINT_TYPE, "previous": None, "signature": signature,
             "signer": {"keyId": "k", "algorithm": "alg", "publicKey": public_key}}
    assert block == dag_cbor.encode(value)
    cp = parse_checkpoint(cid_raw(block), block)
    assert (cp.signature, cp.public_key, cp.head) == (signature, public_key, head)
    assert cp.body == encoding.checkpoint_body(7, head, moment, None)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**40), st.text(max_size=300), st.text(max_size=40),
       st.dictionaries(st.text(max_size=10), st.text(max_size=50), max_size=4),
       st.none() | st.integers(0, 2**20), st.booleans())
def test_entries_encode_canonically(seq, reason, actor_id, details, version, genesis):
    entry = make_entry(seq % 1000, reason=reason or None, details=details, version=version,
                       actor=make_entry().actor.__class__("USER", actor_id))
    prev = None if genesis else cid_raw(os.urandom(8))
    block = encoding.encode_entry(entry, seq, prev)
    value = encoding.entry_value(entry, seq, prev)
    assert block == dag_cbor.encode(to_package(value))
    assert encoding.decode(block) == value
    assert encoding.entry_prefix(block) == (seq, prev)
    assert encoding.is_entry(block)
    back = encoding.entry_from_value(encoding.decode(block))
    assert (back.operation, back.actor.id, back.details, back.version) == (
        entry.operation, actor_id, details, version)


def test_an_entry_with_bytes_where_text_belongs_keeps_them_bytes():
    """Callers pass text; bytes that slip in stay a byte string even when they parse as
    a CID (libipld alone would write a link)."""
    entry = make_entry(3, reason=b"\x01\x55\x12\x03abcdef")
    value = encoding.entry_value(entry, 4, cid_raw(b"x"))
    assert encoding.encode_entry(entry, 4, cid_raw(b"x")) == dag_cbor.encode(to_package(value))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**40), st.text(max_size=20) | cid_like, st.text(max_size=20) | cid_like,
       st.none() | st.binary(min_size=32, max_size=32))
def test_entry_reencodes_is_encode_of_decode(seq, reason, key_id, prev_digest):
    """``verify --deep``'s canonical check (libipld first, ``encode`` when in doubt) says
    what ``encode(decode(block)) == block`` says, for the block the chain writes and for
    the same block with that one field rewritten as a link (tag 42)."""
    prev = None if prev_digest is None else encoding.CID_PREFIX + prev_digest
    block = encoding.encode_entry(make_entry(1, reason=reason, key_id=key_id), seq, prev)
    assert encoding.entry_reencodes(block, decode_dag_cbor(block))
    if isinstance(reason, bytes) and encode_dag_cbor(reason)[0] == 0xD8:  # parses as a CID
        head = encoding.encode(reason)[:-len(reason)]
        link = encode_dag_cbor(reason)
        other = block.replace(b"\x66reason" + head + reason, b"\x66reason" + link, 1)
        assert other != block
        assert not encoding.entry_reencodes(other, decode_dag_cbor(other))
        assert encoding.encode(encoding.decode(other)) != other


def test_cids_match_multiformats():
    for size in range(0, 400, 7):
        block = os.urandom(size)
        expected = CID("base32", 1, "dag-cbor", multihash.digest(block, "sha2-256"))
        raw = cid_raw(block)
        assert raw == bytes(expected)
        assert cid_str(raw) == str(expected)


def test_cids_match_py_cid():
    """py-cid and py-multihash: a second, independent implementation of the same CIDs."""
    import cid as pycid  # py-cid: a test dependency, so a missing one fails
    import multihash as pymultihash
    for i in range(50):
        block = encoding.encode_entry(make_entry(i), i + 1, cid_raw(bytes([i])))
        theirs = pycid.make_cid(1, "dag-cbor", pymultihash.digest(block, "sha2-256").encode())
        assert theirs.encode("base32").decode() == cid_str(cid_raw(block))
        assert theirs.multihash[2:] == hashlib.sha256(block).digest()


def test_time_is_utc_with_microseconds():
    from datetime import datetime, timedelta, timezone

    moment = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert encoding.format_time(moment) == "2026-03-01T10:00:00.000000Z"
    assert encoding.parse_time("2026-03-01T10:00:00.000000Z") == moment


@settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.none() | st.timezones()), st.integers(0, 999_999))
def test_time_text_reused_within_a_second_is_the_full_spelling(moment, micro):
    """``format_time`` keeps the last second's text: the microseconds of any moment, in
    that second or another, are still spelled as ``isoformat`` spells them."""
    from datetime import UTC

    def spelled(m):
        if m.tzinfo is None:
            return m.isoformat(timespec="microseconds") + "Z"
        return m.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

    try:
        utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    except OverflowError:
        return
    for m in (moment, utc, utc.replace(microsecond=micro), moment):
        assert encoding.format_time(m) == spelled(m)

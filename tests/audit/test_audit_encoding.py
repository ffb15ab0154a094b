"""The hand-written DAG-CBOR codec against the dag-cbor package, and CIDs against
multiformats and py-cid (an independent Python implementation of CIDs and multihash)."""

from __future__ import annotations

import hashlib
import os

import dag_cbor
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash

from qkms.audit import encoding
from qkms.audit.encoding import Link, cid_parse, cid_raw, cid_str
from tests.audit.helpers import make_entry

links = st.binary(min_size=32, max_size=32).map(lambda d: Link(encoding.CID_PREFIX + d))
scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text()
           | st.binary() | links | st.floats(allow_nan=False, allow_infinity=False))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(values)
def test_encode_is_byte_identical_to_the_dag_cbor_package(value):
    ours = encoding.encode(value)
    assert ours == dag_cbor.encode(encoding._to_package(value))
    assert encoding.decode(ours) == encoding.from_package(dag_cbor.decode(ours))


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
    assert block == dag_cbor.encode(encoding._to_package(value))
    assert encoding.decode(block) == value
    assert encoding.entry_prefix(block) == (seq, prev)
    assert encoding.is_entry(block)
    back = encoding.entry_from_value(encoding.decode(block))
    assert (back.operation, back.actor.id, back.details, back.version) == (
        entry.operation, actor_id, details, version)


def test_cids_match_multiformats():
    for size in range(0, 400, 7):
        block = os.urandom(size)
        expected = CID("base32", 1, "dag-cbor", multihash.digest(block, "sha2-256"))
        raw = cid_raw(block)
        assert raw == bytes(expected)
        assert cid_str(raw) == str(expected)
        assert cid_parse(str(expected)) == raw
        assert cid_parse(str(expected.set(base="base58btc"))) == raw


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

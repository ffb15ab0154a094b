"""Tamper with a real chain in every way the issue lists; verify names the entry and fault.

The chain: 30 entries, a signed checkpoint after every 10 (in the log and in
the checkpoint file).  Each test edits the raw segment the way an attacker
with file access could, then checks the first finding's kind, sequence
number and CID.
"""

from __future__ import annotations

import pytest

from qkms.audit import encoding
from qkms.audit.chain import AuditChain
from qkms.audit.encoding import cid_raw, cid_str, decode, encode, is_entry
from qkms.audit.entry import Actor
from qkms.audit.store import CHECKPOINTS, Record
from qkms.audit.verify import verify_folder
from qkms.crypto import verify_signature
from tests.audit.helpers import AuditKey, filled, make_entry, segment_records, write_segment

K = 15  # the entry tampered with


@pytest.fixture
async def chain_dir(tmp_path):
    await filled(tmp_path, 30, signer=AuditKey(), checkpoint_every=10)
    return tmp_path


def entries(folder) -> dict[int, Record]:
    return {decode(r.block)["seq"]: r for r in segment_records(folder) if is_entry(r.block)}


def test_untouched_chain_verifies(chain_dir):
    result = verify_folder(chain_dir, check=verify_signature)
    assert result.ok, result.finding
    assert (result.entries, result.first_seq, result.last_seq, result.checkpoints) == (30, 1, 30, 3)
    assert result.last_checkpoint.size == 30 and result.unsigned == 0
    assert verify_folder(chain_dir, deep=True, check=verify_signature).ok


def _tamper(folder, seq: int, change, *, readdress: bool) -> tuple[bytes, bytes]:
    records = segment_records(folder)
    for i, record in enumerate(records):
        if is_entry(record.block) and decode(record.block)["seq"] == seq:
            value = decode(record.block)
            change(value)
            block = encode(value)
            assert block != record.block
            records[i] = (cid_raw(block) if readdress else record.cid, block)
            write_segment(folder, records)
            return record.cid, cid_raw(block)
    raise AssertionError(f"no entry {seq}")


FIELDS = {
    "time": lambda v: v.update(time="2020-01-01T00:00:00.000000Z"),
    "environment": lambda v: v.update(environment="prod"),
    "operation": lambda v: v.update(operation="VERIFY"),
    "result": lambda v: v.update(result="denied"),
    "reason": lambda v: v.update(reason="nothing to see"),
    "actor.id": lambda v: v["actor"].update(id="someone-else"),
    "actor.type": lambda v: v["actor"].update(type="USER"),
    "keyName": lambda v: v.update(keyName="other-key"),
    "keyId": lambda v: v.update(keyId="key_dev_ffffffffffffffff"),
    "keyVersion": lambda v: v.update(keyVersion=7),
    "digests": lambda v: v.update(digests={"data": "sha256:" + "0" * 64}),
    "details": lambda v: v.update(details={"note": "added"}),
    "prev": lambda v: v.update(prev=encoding.Link(cid_raw(b"elsewhere"))),
    "type": lambda v: v.update(type="note"),
    "seq": lambda v: v.update(seq=99),
}


@pytest.mark.parametrize("field", FIELDS)
async def test_field_edited_in_place(chain_dir, field):
    """The bytes changed but the record keeps the old CID: the block no longer hashes to it."""
    old, _ = _tamper(chain_dir, K, FIELDS[field], readdress=False)
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq, finding.cid) == ("edited", K, cid_str(old)), finding


@pytest.mark.parametrize("field", [f for f in FIELDS if f != "seq"])
async def test_field_edited_and_readdressed(chain_dir, field):
    """The attacker also recomputed the CID: the next entry's link gives it away."""
    _, new = _tamper(chain_dir, K, FIELDS[field], readdress=True)
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq, finding.cid) == ("edited", K, cid_str(new)), finding
    assert "re-addressed" in finding.detail


async def test_sequence_number_edited_and_readdressed(chain_dir):
    _tamper(chain_dir, K, FIELDS["seq"], readdress=True)
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq) == ("missing", K), finding


async def test_edit_relinked_up_to_a_checkpoint_is_caught_by_its_signature(chain_dir):
    """Rewrite entries 15..20 consistently: only the signed head of checkpoint 20 disagrees."""
    records = segment_records(chain_dir)
    prev = None
    for i, record in enumerate(records):
        if not is_entry(record.block):
            continue
        value = decode(record.block)
        if value["seq"] == K:
            value["operation"] = "VERIFY"
        if value["seq"] > K and value["seq"] <= 20:
            value["prev"] = encoding.Link(prev)
        if value["seq"] >= K and value["seq"] <= 20:
            block = encode(value)
            records[i] = (cid_raw(block), block)
        prev = records[i][0] if isinstance(records[i], tuple) else records[i].cid
    write_segment(chain_dir, records)
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq) == ("edited", 20), finding
    assert "rewritten" in finding.detail


async def test_deleted_entry(chain_dir):
    victim = entries(chain_dir)[K]
    write_segment(chain_dir, [r for r in segment_records(chain_dir) if r.cid != victim.cid])
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq, finding.cid) == ("missing", K, cid_str(victim.cid))


async def test_reordered_entries(chain_dir):
    records = segment_records(chain_dir)
    by_seq = entries(chain_dir)
    i, j = records.index(by_seq[K]), records.index(by_seq[K + 1])
    records[i], records[j] = records[j], records[i]
    write_segment(chain_dir, records)
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq, finding.cid) == (
        "reordered", K + 1, cid_str(by_seq[K + 1].cid)), finding


async def test_forked_chain(chain_dir):
    """A second entry K+1 built on entry K, as a second writer would append it."""
    records = segment_records(chain_dir)
    by_seq = entries(chain_dir)
    fork = encoding.encode_entry(make_entry(500, operation="DECRYPT"), K + 1, by_seq[K].cid)
    records.insert(records.index(by_seq[K + 1]) + 1, (cid_raw(fork), fork))
    write_segment(chain_dir, records)
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq, finding.cid) == ("forked", K + 1, cid_str(cid_raw(fork)))


async def test_truncated_after_a_checkpoint(chain_dir):
    """The log cut right after checkpoint 20; the checkpoint file still knows of 30."""
    records = segment_records(chain_dir)
    cut = next(i for i, r in enumerate(records)
               if not is_entry(r.block) and decode(r.block)["size"] == 20)
    write_segment(chain_dir, records[:cut + 1])
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq, finding.cid) == ("truncated", 21, None), finding
    assert "truncated after a checkpoint" in finding.detail


async def test_truncated_by_one_entry_names_its_cid(chain_dir):
    records = segment_records(chain_dir)
    last = entries(chain_dir)[30]
    write_segment(chain_dir, records[:records.index(last)])
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq, finding.cid) == ("truncated", 30, cid_str(last.cid))


async def test_forged_checkpoint_signature(chain_dir):
    records = segment_records(chain_dir)
    i = next(i for i, r in enumerate(records) if not is_entry(r.block))
    value = decode(records[i].block)
    value["signature"] = bytes(len(value["signature"]))
    block = encode(value)
    records[i] = (cid_raw(block), block)
    write_segment(chain_dir, records)
    (chain_dir / CHECKPOINTS).unlink()  # so the log's copy is the first one checked
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq) == ("bad-signature", 10)
    assert finding.cid == cid_str(cid_raw(block))


async def test_pinned_key_refuses_another_key(chain_dir):
    finding = verify_folder(chain_dir, public_key=AuditKey("other").public,
                            check=verify_signature).finding
    assert (finding.kind, finding.seq) == ("key-changed", 10)
    assert verify_folder(chain_dir, public_key=AuditKey().public, check=verify_signature).ok


async def test_checkpoints_by_a_second_key_are_a_finding(tmp_path):
    await filled(tmp_path, 10, signer=AuditKey(), checkpoint_every=5)
    from qkms.audit.chain import AuditChain

    async with AuditChain(tmp_path, signer=AuditKey("intruder"), checkpoint_every=5) as chain:
        for i in range(5):
            await chain.append(make_entry(i))
    finding = verify_folder(tmp_path, check=verify_signature).finding
    assert (finding.kind, finding.seq) == ("key-changed", 15)


async def test_deep_mode_catches_non_canonical_blocks(tmp_path):
    await filled(tmp_path, 5)  # no signer: nothing else pins the last entry
    records = segment_records(tmp_path)
    last = records[-1].block
    marker = b"\x6akeyVersion\x01"
    assert marker in last
    block = last.replace(marker, b"\x6akeyVersion\x18\x01")  # a non-minimal integer
    records[-1] = (cid_raw(block), block)
    write_segment(tmp_path, records)
    assert verify_folder(tmp_path, check=verify_signature).ok
    finding = verify_folder(tmp_path, deep=True, check=verify_signature).finding
    assert (finding.kind, finding.seq) == ("edited", 5)
    assert "DAG-CBOR" in finding.detail  # libipld refuses the non-minimal integer


CID_LIKE = b"\x01\x55\x12\x03abcdef"  # parses as a CID (raw, sha2-256, 3 bytes)


async def test_deep_mode_accepts_cid_like_bytes_where_text_belongs(tmp_path):
    """The chain writes such bytes as a byte string (``encoding.encode``); libipld alone
    would re-encode them as a link, so ``--deep`` must re-encode as the chain does."""
    async with AuditChain(tmp_path) as chain:
        await chain.append(make_entry(0, reason=CID_LIKE))
        await chain.append(make_entry(1, key_id=CID_LIKE, actor=Actor("USER", CID_LIKE)))
        await chain.append(make_entry(2))
    assert verify_folder(tmp_path, check=verify_signature).ok
    result = verify_folder(tmp_path, deep=True, check=verify_signature)
    assert result.ok, result.finding
    assert result.entries == 3


async def test_deep_mode_catches_a_link_where_the_chain_writes_bytes(tmp_path):
    """The same CID-like bytes rewritten as a link (tag 42) and re-addressed: canonical
    for libipld, but not what the chain writes."""
    async with AuditChain(tmp_path) as chain:
        await chain.append(make_entry(0))
        await chain.append(make_entry(1, reason=CID_LIKE))
    records = segment_records(tmp_path)
    as_bytes = b"\x66reason\x4a" + CID_LIKE
    assert records[-1].block.count(as_bytes) == 1
    block = records[-1].block.replace(as_bytes, b"\x66reason\xd8\x2a\x4b\x00" + CID_LIKE)
    records[-1] = (cid_raw(block), block)
    write_segment(tmp_path, records)
    assert decode(block)["reason"] == CID_LIKE  # same value, other block
    assert verify_folder(tmp_path, check=verify_signature).ok
    finding = verify_folder(tmp_path, deep=True, check=verify_signature).finding
    assert (finding.kind, finding.seq, finding.cid) == ("edited", 2, cid_str(cid_raw(block)))
    assert "canonical" in finding.detail


def test_deep_check_of_entries_whose_bytes_hold_tag_42():
    """Bytes d8 2a (what tag 42 looks like) inside a seq or a prev digest send the check
    down its exact path (``encoding.encode``); such entries still pass."""
    from libipld import decode_dag_cbor

    from qkms.audit.verify import _deep_problem

    for seq, prev in ((0xD82A, cid_raw(b"a")), (7, encoding.CID_PREFIX + b"\xd8\x2a" * 16),
                      (0xD82A, None)):
        block = encoding.encode_entry(make_entry(seq % 100), seq, prev)
        assert block.count(b"\xd8\x2a") > (prev is not None)
        assert _deep_problem(block) is None
        assert encoding.entry_reencodes(block, decode_dag_cbor(block))


async def test_log_without_its_start_is_unanchored(chain_dir):
    records = segment_records(chain_dir)
    write_segment(chain_dir, [r for r in records if not (
        is_entry(r.block) and decode(r.block)["seq"] <= 3)])
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert (finding.kind, finding.seq) == ("missing", 3), finding


def test_empty_folder_is_a_finding(tmp_path):
    assert verify_folder(tmp_path, check=verify_signature).finding.kind == "missing"


async def test_checkpoint_link_rewritten_as_bytes_is_caught(chain_dir):
    """libipld decodes a link and a byte string alike: a checkpoint whose ``head`` link was
    rewritten as the same CID's bytes (same signed fields, other block) must not pass."""
    records = segment_records(chain_dir)
    i = next(i for i, r in enumerate(records) if not is_entry(r.block))
    old = records[i].block
    link = b"\x64head\xd8\x2a\x58\x25\x00"
    assert old.count(link) == 1
    block = old.replace(link, b"\x64head\x58\x24")
    records[i] = (cid_raw(block), block)
    write_segment(chain_dir, records)
    (chain_dir / CHECKPOINTS).unlink()  # so the log's copy is the one checked
    finding = verify_folder(chain_dir, check=verify_signature).finding
    assert finding is not None and finding.kind == "edited", finding
    assert "canonical" in finding.detail

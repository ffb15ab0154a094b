"""CARv1 export of the chain (or a range of it), and reading a CAR back to verify it.

A CARv1 is ``varint | DAG-CBOR {roots, version: 1}`` followed by sections
``varint | CID | block``: the form ``ipfs dag import`` accepts.  The export
lists blocks in chain order with two roots: the newest entry (its ``prev``
links reach every entry) and the newest checkpoint (its ``previous`` links
reach every checkpoint).  A full export is a complete DAG.  A range, or a
log whose oldest segments were pruned, links to blocks it does not hold:
import those with ``ipfs dag import --pin-roots=false``.

Reading does not trust the CAR's order (``ipfs dag export`` writes newest
first): entries are put in sequence order and each checkpoint right after
the entry it covers, then the usual verifier runs.  The header is decoded
with libipld; the sections are split here rather than by ``libipld.decode_car``,
which returns decoded values keyed by CID: the verifier needs each block's
exact bytes (to hash them) and every copy of it, in file order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .checkpoint import SignatureCheck
from .encoding import (
    CID_LENGTH,
    CID_PREFIX,
    Link,
    cid_str,
    decode,
    encode,
    entry_prefix,
    is_entry,
    read_varint,
)
from .encoding import section as car_section
from .store import Damaged, Record, iter_log
from .verify import Finding, OnEntry, Verifier, VerifyResult, verify_folder


@dataclass(frozen=True)
class ExportResult:
    entries: int
    checkpoints: int
    roots: list[str]
    first_seq: int | None
    last_seq: int | None


def _in_range(record: Record, first: int, last: int) -> tuple[bool, int | None]:
    if is_entry(record.block):
        seq = entry_prefix(record.block)[0]
        return first <= seq <= last, seq
    return True, None


def _selected(root: Path, first: int, last: int) -> Iterator[tuple[Record, int | None]]:
    """Entries in range, and the checkpoints that cover sizes first-1..last (deduplicated)."""
    from .checkpoint import parse_checkpoint

    seen: set[bytes] = set()
    try:
        for record in iter_log(root):
            keep, seq = _in_range(record, first, last)
            if seq is None:
                if record.cid in seen:
                    continue
                size = parse_checkpoint(record.cid, record.block).size
                keep = first - 1 <= size <= last
                seen.add(record.cid)
            if keep:
                yield record, seq
    except Damaged as exc:
        if not exc.tail:
            raise


def export_car(root: Path, out: BinaryIO, *, first: int | None = None,
               last: int | None = None) -> ExportResult:
    """Write the chain (entries ``first``..``last``, default all) to ``out`` as CARv1."""
    lo, hi = first or 1, last if last is not None else 2**63
    head = checkpoint = None
    low = high = None
    entries = checkpoints = 0
    for record, seq in _selected(root, lo, hi):
        if seq is None:
            checkpoint = record.cid
            checkpoints += 1
        else:
            head, high = record.cid, seq
            low = seq if low is None else low
            entries += 1
    if high is not None:
        hi = high  # the writer may have appended since: export what the roots cover
    roots = [c for c in (head, checkpoint) if c is not None]
    header = encode({"roots": [Link(r) for r in roots], "version": 1})
    out.write(car_section(b"", header))
    buffer: list[bytes] = []
    for record, _ in _selected(root, lo, hi):
        buffer.append(car_section(record.cid, record.block))
        if len(buffer) >= 4096:
            out.write(b"".join(buffer))
            buffer.clear()
    out.write(b"".join(buffer))
    return ExportResult(entries, checkpoints, [cid_str(r) for r in roots], low, high)


def read_car(path: Path) -> tuple[list[bytes], list[Record]]:
    """(roots, records in file order); ``Damaged`` if the file is not a well-formed CARv1."""
    data = path.read_bytes()
    try:
        length, pos = read_varint(data, 0)
        header = decode(data[pos:pos + length])
        if header.get("version") != 1:
            raise Damaged(path, 0, "not a CARv1 (version is not 1)", tail=False)
        roots = [bytes(c) for c in header.get("roots", [])]
    except (IndexError, ValueError, AttributeError, TypeError, RecursionError):
        raise Damaged(path, 0, "not a CARv1 file (bad header)", tail=False) from None
    records: list[Record] = []
    pos += length
    while pos < len(data):
        start = pos
        length, pos = read_varint(data, pos)
        end = pos + length
        if end > len(data):
            raise Damaged(path, start, "section runs past the end of the file", tail=True)
        cid = data[pos:pos + CID_LENGTH]
        if cid[:4] != CID_PREFIX:
            raise Damaged(path, start, "a block that is not dag-cbor sha2-256", tail=False)
        records.append(Record(cid, data[pos + CID_LENGTH:end], 0, start, end))
        pos = end
    return roots, records


def chain_order(records: list[Record]) -> list[Record]:
    """Entries by sequence, each checkpoint right after the entry it covers."""
    from .checkpoint import parse_checkpoint

    entries: list[tuple[int, Record]] = []
    by_size: dict[int, list[Record]] = {}
    seen: set[bytes] = set()
    for record in records:
        if record.cid in seen:
            continue
        seen.add(record.cid)
        if is_entry(record.block):
            try:
                entries.append((entry_prefix(record.block)[0], record))
            except (ValueError, IndexError):
                entries.append((0, record))
        else:
            try:
                size = parse_checkpoint(record.cid, record.block).size
            except ValueError:
                size = 0
            by_size.setdefault(size, []).append(record)
    entries.sort(key=lambda pair: pair[0])
    first = entries[0][0] if entries else 1
    ordered = [r for size in sorted(by_size) if size < first for r in by_size[size]]
    for seq, record in entries:
        ordered.append(record)
        ordered.extend(by_size.pop(seq, []))
    ordered.extend(r for size in sorted(by_size) if size >= first for r in by_size[size])
    return ordered


def verify_car(path: Path, *, check: SignatureCheck, public_key: bytes | None = None,
               deep: bool = False, on_entry: OnEntry | None = None) -> VerifyResult:
    verifier = Verifier(check=check, public_key=public_key, deep=deep, on_entry=on_entry)
    try:
        _, records = read_car(path)
    except Damaged as exc:
        verifier.result.finding = Finding("edited", None, None, f"CAR damaged: {exc}")
        return verifier.result
    return verifier.run(chain_order(records))


def compare(root: Path, car: Path, *, check: SignatureCheck, public_key: bytes | None = None,
            deep: bool = False) -> tuple[VerifyResult, VerifyResult, Finding | None]:
    """Verify both, then check every entry of the CAR is in the data dir with the same CID."""
    in_car: dict[int, bytes] = {}
    car_result = verify_car(car, check=check, public_key=public_key, deep=deep,
                            on_entry=lambda seq, cid, _: in_car.__setitem__(seq, cid))
    difference: list[Finding] = []

    def same(seq: int, cid: bytes, _: bytes) -> None:
        other = in_car.get(seq)
        if not difference and other is not None and other != cid:
            difference.append(Finding("edited", seq, cid_str(cid),
                                      f"the CAR has {cid_str(other)} for this entry"))

    folder_result = verify_folder(root, check=check,
                                  public_key=public_key or car_result.public_key,
                                  deep=deep, on_entry=same)
    if not difference and in_car and folder_result.ok:
        last = folder_result.last_seq or 0
        beyond = [seq for seq in in_car if seq > last]
        if beyond:
            seq = min(beyond)
            difference.append(Finding("truncated", seq, cid_str(in_car[seq]),
                                      f"the data dir ends at entry {last}; the CAR goes on "
                                      f"to {max(beyond)}"))
        earlier = [seq for seq in in_car if seq < (folder_result.first_seq or 1)]
        if earlier and not beyond:
            folder_result.warnings.append(
                f"{len(earlier)} entries of the CAR were pruned from the data dir")
    return folder_result, car_result, difference[0] if difference else None

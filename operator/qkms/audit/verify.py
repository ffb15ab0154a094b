"""Walk an audit chain and report the first bad entry: what, where, and which CID.

Checks, streaming, in one pass: every block hashes to its CID (else
*edited*); entry sequence numbers run 1, 2, 3... in log order (a gap is
*missing*, an entry that turns up early is *reordered*, a second entry for a
number already taken is *forked*); each ``prev`` links to the CID of the
entry before (else the entry before was *edited* and re-addressed); every
checkpoint's signature verifies under the pinned key (*bad-signature*,
*key-changed*) and names the CID the chain really has at its size (else
*edited*: rewritten); and no checkpoint, in the log or in the separate
checkpoint file, covers more entries than the log holds (*truncated* after
that checkpoint).

The key is pinned: the one given (``--public-key``) or else the first
checkpoint's (trust on first use).  A log whose oldest segments were pruned
starts with a copy of a checkpoint, which anchors the first entry left.

The fast path reads ``seq`` and ``prev`` from each entry's fixed canonical
prefix and hashes the block; ``deep=True`` also decodes every entry as strict
DAG-CBOR (libipld), checks that re-encoding it as the chain does
(``encoding.encode``: ``prev`` a link, every other bytes value a byte string)
gives back the same bytes (canonical form), and that it has exactly the entry
fields, links ``prev`` to a dag-cbor CID and has a valid type and result.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from libipld import decode_dag_cbor

from .checkpoint import Checkpoint, SignatureCheck, parse_checkpoint, signature_valid
from .encoding import (
    CID_LENGTH,
    CID_PREFIX,
    ENTRY_KEYS,
    cid_str,
    entry_prefix,
    entry_reencodes,
    is_entry,
)
from .store import Damaged, Record, iter_log, read_checkpoints, segment_paths

OnEntry = Callable[[int, bytes, bytes], None]
"""Called as (seq, CID bytes, block) for each entry that passed its checks."""


@dataclass(frozen=True)
class Finding:
    kind: str  # edited | missing | reordered | forked | truncated | bad-signature | key-changed
    seq: int | None
    cid: str | None
    detail: str

    def __str__(self) -> str:
        where = f"entry {self.seq}" if self.seq is not None else "checkpoint"
        return f"{where} ({self.cid or 'CID unknown'}): {self.kind}: {self.detail}"


@dataclass
class VerifyResult:
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None
    checkpoints: int = 0
    last_checkpoint: Checkpoint | None = None
    anchor: Checkpoint | None = None  # the checkpoint a pruned log starts from
    public_key: bytes | None = None
    finding: Finding | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.finding is None

    @property
    def unsigned(self) -> int:
        """Entries after the last checkpoint (hash-chained but not yet signed)."""
        if self.last_seq is None:
            return 0
        signed = self.last_checkpoint.size if self.last_checkpoint else 0
        return max(0, self.last_seq - signed)

    def summary(self) -> str:
        if self.finding is not None:
            return f"FAILED at {self.finding}"
        span = f"seq {self.first_seq}..{self.last_seq}" if self.entries else "empty"
        cp = self.last_checkpoint
        signed = (f"last checkpoint {cp.cid_text} at {cp.size} signed by {cp.key_id}"
                  if cp else "no checkpoint")
        return (f"OK {self.entries} entries ({span}), head {self.head}; {signed}; "
                f"{self.unsigned} entries after it")


class Verifier:
    def __init__(self, *, check: SignatureCheck, public_key: bytes | None = None,
                 deep: bool = False, on_entry: OnEntry | None = None) -> None:
        """``check``: how checkpoint signatures are verified (``qkms.crypto.verify_signature``)."""
        self.check = check
        self.result = VerifyResult(public_key=public_key)
        self.deep = deep
        self.on_entry = on_entry
        self._pending: dict[int, Checkpoint] = {}
        self._verified: set[bytes] = set()
        self._expect: int | None = None
        self._prev: bytes | None = None
        self._damage: Damaged | None = None

    # -- checkpoints -------------------------------------------------------------------
    def _signed(self, cp: Checkpoint) -> Finding | None:
        if cp.cid in self._verified:
            return None
        if self.result.public_key is None:
            self.result.public_key = cp.public_key  # trust on first use
        elif cp.public_key != self.result.public_key:
            return Finding("key-changed", cp.size, cp.cid_text,
                           f"checkpoint signed by {cp.key_id} with a key other than the "
                           "pinned one")
        if not signature_valid(cp, self.check, self.result.public_key):
            return Finding("bad-signature", cp.size, cp.cid_text,
                           "the checkpoint signature does not verify")
        self._verified.add(cp.cid)
        self.result.checkpoints += 1
        return None

    def load_checkpoints(self, records: Iterable[Record]) -> Finding | None:
        """Checkpoints kept apart from the log: each must match the log where it points."""
        for record in records:
            if hashlib.sha256(record.block).digest() != record.cid[4:]:
                return Finding("edited", None, cid_str(record.cid),
                               "checkpoint file block does not hash to its CID")
            try:
                cp = parse_checkpoint(record.cid, record.block)
            except ValueError as exc:
                return Finding("edited", None, cid_str(record.cid), str(exc))
            if found := self._signed(cp):
                return found
            self._pending[cp.size] = cp
            self._note(cp)
        return None

    def _note(self, cp: Checkpoint) -> None:
        last = self.result.last_checkpoint
        if last is None or cp.size >= last.size:
            self.result.last_checkpoint = cp

    def _checkpoint(self, record: Record) -> Finding | None:
        try:
            cp = parse_checkpoint(record.cid, record.block)
        except ValueError as exc:
            return Finding("edited", self._expect, cid_str(record.cid), str(exc))
        if found := self._signed(cp):
            return found
        if self._expect is None:  # a pruned log starts at a checkpoint
            self._expect, self._prev = cp.size + 1, cp.head
            self.result.anchor = cp
        elif cp.size != self._expect - 1:
            return Finding("reordered", cp.size, cp.cid_text,
                           f"checkpoint of size {cp.size} found after entry {self._expect - 1}")
        elif cp.head != self._prev:
            return Finding("edited", cp.size, cid_str(self._prev) if self._prev else None,
                           f"checkpoint {cp.cid_text} signed head {cid_str(cp.head)} for this "
                           "entry: the chain up to here was rewritten")
        self._note(cp)
        return None

    # -- entries -------------------------------------------------------------------------
    def _safe(self, records: Iterable[Record]) -> Iterator[Record]:
        try:
            yield from records
        except Damaged as exc:
            self._damage = exc

    def run(self, records: Iterable[Record]) -> VerifyResult:
        self.result.finding = self._walk(self._safe(records))
        if self.result.finding is None and self._damage is not None:
            if self._damage.tail:
                self.result.warnings.append(
                    f"incomplete record at the end ({self._damage}): a torn write, ignored")
            else:
                self.result.finding = Finding(
                    "edited", self._expect, None, f"log damaged: {self._damage}")
        if self.result.finding is None:
            self.result.finding = self._truncation()
        return self.result

    def _walk(self, records: Iterator[Record]) -> Finding | None:
        """The pass over the log; it ends at the first finding, so only the code that
        explains one looks ahead (``_Ahead``), and the loop pays no wrapper per record."""
        sha256 = hashlib.sha256
        result = self.result
        for record in records:
            block, cid = record.block, record.cid
            entry = is_entry(block)
            if sha256(block).digest() != cid[4:]:
                return Finding("edited", self._expect if self._expect is not None
                               else _seq_of(block) if entry else None,
                               cid_str(cid), "block does not hash to its CID: changed "
                               "after it was written")
            if not entry:
                if found := self._checkpoint(record):
                    return found
                continue
            try:
                seq, prev = entry_prefix(block)
            except (ValueError, IndexError) as exc:
                return Finding("edited", self._expect, cid_str(cid), f"malformed entry: {exc}")
            if self._expect is None and (found := self._start(seq, prev, cid)):
                return found
            if seq != self._expect:
                return self._out_of_order(seq, prev, cid, _Ahead(records))
            if prev != self._prev:
                return self._broken_link(seq, prev, cid, _Ahead(records))
            if self.deep and (problem := _deep_problem(block)):
                return Finding("edited", seq, cid_str(cid), problem)
            cp = self._pending.get(seq)
            if cp is not None and cp.head != cid:
                return Finding("edited", seq, cid_str(cid),
                               f"checkpoint {cp.cid_text} signed {cid_str(cp.head)} as entry "
                               f"{seq}: the chain up to here was rewritten")
            if self.on_entry is not None:
                self.on_entry(seq, cid, block)
            if result.first_seq is None:
                result.first_seq = seq
            result.entries += 1
            self._expect, self._prev = seq + 1, cid
        if self._expect is not None and result.entries:
            result.last_seq = self._expect - 1
            result.head = cid_str(self._prev) if self._prev else None
        return None

    def _broken_link(self, seq: int, prev: bytes | None, cid: bytes,
                     records: _Ahead) -> Finding:
        """Entry ``seq`` does not link to the entry before: which of the two changed?

        Whoever re-addresses an edited entry changes its CID, so the entry after it
        no longer links to it.  If the next entry (or the checkpoint that signed
        this one) still agrees with ``seq``'s CID, ``seq`` is intact and the entry
        before it was changed; otherwise ``seq`` itself was.
        """
        linked = cid_str(prev) if prev else "nothing"
        before = cid_str(self._prev) if self._prev else None
        witness = self._pending.get(seq)
        after = records.next_entry_or_checkpoint(seq)
        if witness is None and after is not None and not is_entry(after.block):
            witness = parse_checkpoint(after.cid, after.block)
        if witness is not None:
            intact = witness.head == cid
        elif after is not None:
            intact = entry_prefix(after.block)[1] == cid
        else:
            intact = False
        if intact:
            return Finding("edited", seq - 1, before,
                           f"entry {seq} links to {linked}, the original entry {seq - 1}; the "
                           f"entry stored as {seq - 1} was changed and re-addressed")
        return Finding("edited", seq, cid_str(cid),
                       f"entry {seq} was changed and re-addressed: it links to {linked}, "
                       f"not to entry {seq - 1} ({before}), and nothing after it links to it")

    def _start(self, seq: int, prev: bytes | None, cid: bytes) -> Finding | None:
        if seq == 1 and prev is None:
            self._expect = 1
            return None
        anchor = self._pending.get(seq - 1)
        if anchor is not None and anchor.head == prev:
            self._expect, self._prev = seq, prev
            self.result.anchor = anchor
            return None
        return Finding("missing", seq - 1 if seq > 1 else 1, cid_str(prev) if prev else None,
                       f"the log starts at entry {seq} and no checkpoint anchors it "
                       "(entries before it are missing)")

    def _out_of_order(self, seq: int, prev: bytes | None, cid: bytes,
                      rest: _Ahead) -> Finding:
        expect = self._expect
        assert expect is not None
        if seq < expect:
            return Finding("forked", seq, cid_str(cid),
                           f"a second entry {seq} after entry {expect - 1}: the chain forks")
        for later in rest:
            if is_entry(later.block) and _seq_of(later.block) == expect:
                return Finding("reordered", seq, cid_str(cid),
                               f"entry {seq} comes before entry {expect}")
        known = cid_str(prev) if prev is not None and seq == expect + 1 else None
        return Finding("missing", expect, known,
                       f"entry {expect} is missing: the log goes from entry {expect - 1} "
                       f"to entry {seq}")

    def _truncation(self) -> Finding | None:
        last = self.result.last_seq or (self._expect - 1 if self._expect else 0)
        beyond = sorted(size for size in self._pending if size > last)
        if not beyond:
            return None
        cp = self._pending[beyond[-1]]
        return Finding("truncated", last + 1,
                       cid_str(cp.head) if cp.size == last + 1 else None,
                       f"checkpoint {cp.cid_text} covers {cp.size} entries but the log "
                       f"ends at entry {last}: truncated after a checkpoint")


class _Ahead:
    """An iterator of records that can look ahead without losing what it read."""

    def __init__(self, records: Iterable[Record]) -> None:
        self._records = iter(records)
        self._buffer: deque[Record] = deque()

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        if self._buffer:
            return self._buffer.popleft()
        return next(self._records)

    def next_entry_or_checkpoint(self, size: int) -> Record | None:
        """The next entry, or a checkpoint of ``size`` met before it (nothing consumed)."""
        for record in self._buffer:
            if is_entry(record.block) or _checkpoint_size(record) == size:
                return record
        for record in self._records:
            self._buffer.append(record)
            if is_entry(record.block) or _checkpoint_size(record) == size:
                return record
        return None


def _checkpoint_size(record: Record) -> int | None:
    try:
        return parse_checkpoint(record.cid, record.block).size
    except ValueError:
        return None


def _seq_of(block: bytes) -> int | None:
    try:
        return entry_prefix(block)[0]
    except (ValueError, IndexError):
        return None


def _deep_problem(block: bytes) -> str | None:
    """Strict DAG-CBOR, canonical, and the entry fields (``None`` when all is well)."""
    try:
        value = decode_dag_cbor(block)
    except (ValueError, RecursionError) as exc:
        return f"not valid DAG-CBOR: {exc}"
    if type(value) is not dict or value.keys() != ENTRY_KEYS:
        return "entry fields are missing or unexpected"
    prev = value["prev"]
    if prev is not None and (type(prev) is not bytes or len(prev) != CID_LENGTH
                             or prev[:4] != CID_PREFIX):
        return "prev is not a dag-cbor sha2-256 CID"
    try:  # as the chain encodes: prev a link, every other bytes value a byte string
        canonical = entry_reencodes(block, value)
    except ValueError as exc:
        return f"not valid DAG-CBOR: {exc}"
    if not canonical:
        return "not canonical DAG-CBOR"
    if value["type"] != "entry" or value["result"] not in ("success", "denied", "error"):
        return "entry type or result is not valid"
    return None


def verify_folder(root: Path, *, check: SignatureCheck, public_key: bytes | None = None,
                  deep: bool = False, on_entry: OnEntry | None = None) -> VerifyResult:
    """Verify an audit folder: its checkpoint file, then its log."""
    verifier = Verifier(check=check, public_key=public_key, deep=deep, on_entry=on_entry)
    if not segment_paths(root):
        verifier.result.finding = Finding("missing", None, None, f"no audit log in {root}")
        return verifier.result
    checkpoints, damage = read_checkpoints(root)
    if found := verifier.load_checkpoints(checkpoints):
        verifier.result.finding = found
        return verifier.result
    if damage is not None:
        if not damage.tail:
            verifier.result.finding = Finding("edited", None, None,
                                              f"checkpoint file damaged: {damage}")
            return verifier.result
        verifier.result.warnings.append(f"checkpoint file has a torn last record: {damage}")
    return verifier.run(iter_log(root))

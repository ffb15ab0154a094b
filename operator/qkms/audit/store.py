"""The embedded, append-only block store behind the audit chain.

Layout of the audit folder (``$QKMS_DATA_DIR/audit``)::

    segments/00000001.qlog   entry and checkpoint blocks, in chain order
    checkpoints.qlog         every checkpoint again, on its own (see below)
    LOCK                     flock'ed by the one process that appends
    torn/                    bytes cut from a torn tail, kept for forensics

Every file starts with an 8-byte magic and then holds records in the CARv1
section form: ``varint(len) | CID (36 bytes) | DAG-CBOR block``.  The CID is
the sha2-256 of the block, so a record checks itself: a torn or garbled
record is found by framing or by hash, with no extra checksum.  Blocks are
thus addressed by CID (``BlockIndex`` maps CID to place on demand) and the
head pointer is the last entry of the last segment.

Segments roll only right after a checkpoint, and a new segment starts with a
copy of that checkpoint: each segment is anchored by a signed (size, head),
so retention can delete whole old segments and what remains still verifies.
``checkpoints.qlog`` keeps every checkpoint apart from the log, so a log cut
after a checkpoint (the file truncated, the newest segments deleted) is still
caught by the verifier.

Durability (why acknowledged entries survive):

* ``kill -9``: each append is one ``write()`` of whole records to the file
  before the entry is acknowledged; the page cache belongs to the kernel, so
  a killed process loses nothing it acknowledged.
* Power loss: the chain's ``sync="fsync"`` mode (the default) acknowledges an
  entry only after an ``fsync`` covering it; concurrent appends share one
  ``fsync`` (group commit).  ``sync="write"`` acknowledges after ``write()``
  and fsyncs in the background every ``fsync_interval`` seconds, so a power
  loss may lose that last interval.  Checkpoints, segment rolls and the
  checkpoint file are always fsynced before they count.
* A crash can leave a partial last record.  ``SegmentLog.open`` scans the
  last segment, moves any bad tail to ``torn/`` and truncates there, so the
  chain resumes from the last complete entry.  Damage anywhere else is not a
  torn write and refuses to open (the verifier says where).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qkms.errors import AuditStorageError
from qkms.store.kek import private_dirs
from qkms.store.records import fsync_dir

from .encoding import CID_LENGTH, CID_PREFIX, read_varint

log = logging.getLogger("key-management:audit")

MAGIC = b"QKMSLOG\x01"
SEGMENTS = "segments"
CHECKPOINTS = "checkpoints.qlog"
SUFFIX = ".qlog"


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through
class Record:  # object.__setattr__, about 3x dearer, once per record verified
    cid: bytes
    block: bytes
    segment: int  # segment number; 0 for the checkpoint file
    offset: int   # where the record starts in its file
    end: int      # where the next record starts


class Damaged(Exception):
    """A file whose records stop being well formed at ``offset``."""

    def __init__(self, path: Path, offset: int, reason: str, *, tail: bool) -> None:
        super().__init__(f"{path} at byte {offset}: {reason}")
        self.path, self.offset, self.reason, self.tail = path, offset, reason, tail


def parse(data: bytes, path: Path, segment: int, *, check_hash: bool,
          base: int = 0) -> Iterator[Record]:
    """Records of one file's bytes; raises ``Damaged`` where they stop being well formed.

    ``tail`` on the exception says whether the damage could be a torn write:
    no complete, hash-valid record follows it.  With ``base``, ``data`` is the
    file from that offset on.
    """
    if base == 0 and data[:len(MAGIC)] != MAGIC:
        raise Damaged(path, 0, "not a qkms audit log (bad magic)", tail=len(data) < len(MAGIC))
    pos, size = (len(MAGIC) if base == 0 else 0), len(data)
    while pos < size:
        problem = None
        try:
            length, body = read_varint(data, pos)
        except (IndexError, ValueError):
            length, body, problem = 0, pos, "incomplete record length"
        end = body + length
        cid = data[body:body + CID_LENGTH]
        block = data[body + CID_LENGTH:end]
        if problem is None:
            if end > size:
                problem = "record runs past the end of the file"
            elif length <= CID_LENGTH or cid[:4] != CID_PREFIX:
                problem = "record without a dag-cbor sha2-256 CID"
            elif check_hash and hashlib.sha256(block).digest() != cid[4:]:
                problem = "block does not hash to its CID"
        if problem is not None:
            raise Damaged(path, base + pos, problem, tail=not _record_after(data, pos + 1))
        yield Record(cid, block, segment, base + pos, base + end)
        pos = end


def _record_after(data: bytes, start: int) -> bool:
    """Whether a complete, hash-valid record starts anywhere after ``start``."""
    at = data.find(CID_PREFIX, start)
    while at != -1:
        for width in (1, 2, 3):
            begin = at - width
            if begin < start - 1:
                continue
            try:
                length, body = read_varint(data, begin)
            except (IndexError, ValueError):
                continue
            end = body + length
            if body == at and end <= len(data) and length > CID_LENGTH and (
                    hashlib.sha256(data[at + CID_LENGTH:end]).digest() == data[at + 4:at + 36]):
                return True
        at = data.find(CID_PREFIX, at + 1)
    return False


def segment_paths(root: Path) -> list[tuple[int, Path]]:
    folder = root / SEGMENTS
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"*{SUFFIX}"):
        if path.stem.isdigit():
            found.append((int(path.stem), path))
    return sorted(found)


def segment_path(root: Path, number: int) -> Path:
    return root / SEGMENTS / f"{number:08d}{SUFFIX}"


def iter_log(root: Path, *, check_hash: bool = False) -> Iterator[Record]:
    """Every record of every segment in order (raises ``Damaged`` as ``parse`` does)."""
    paths = segment_paths(root)
    for i, (number, path) in enumerate(paths):
        last = i == len(paths) - 1
        try:
            yield from parse(path.read_bytes(), path, number, check_hash=check_hash)
        except Damaged as exc:
            exc.tail = exc.tail and last
            raise


def read_from(root: Path, segment: int, offset: int) -> list[Record]:
    """Complete records of one segment from ``offset`` on, for a reader following the
    writer: an incomplete last record (a write in progress) is left for next time."""
    found: list[Record] = []
    try:
        with open(segment_path(root, segment), "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        found.extend(parse(data, segment_path(root, segment), segment, check_hash=False,
                           base=offset))
    except (Damaged, FileNotFoundError):
        pass
    return found


def read_checkpoints(root: Path) -> tuple[list[Record], Damaged | None]:
    """The checkpoint file's records, and the damage that stopped reading it, if any."""
    path = root / CHECKPOINTS
    if not path.exists():
        return [], None
    found: list[Record] = []
    try:
        found.extend(parse(path.read_bytes(), path, 0, check_hash=True))
    except Damaged as exc:
        return found, exc
    return found, None



def _write_private(path: Path, data: bytes) -> None:
    """Create (or overwrite) a log file with mode 0600, whatever the umask."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(data)


def _cut(path: Path, data: bytes, offset: int, root: Path, why: str) -> bytes:
    """Move a torn tail aside (kept for forensics) and truncate the file there."""
    torn = root / "torn"
    torn.mkdir(exist_ok=True, mode=0o700)
    keep = torn / f"{path.name}.{offset}.torn"
    fd = os.open(keep, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data[offset:])
    with open(path, "r+b") as handle:
        handle.truncate(offset)
        os.fsync(handle.fileno())
    log.warning("audit: torn write in %s at byte %d (%s): %d bytes moved to %s",
                path.name, offset, why, len(data) - offset, keep)
    return data[:offset]


class _AppendFile:
    """One append-only file: whole-record writes, truncated back if a write fails."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.size = size
        os.lseek(self.fd, size, os.SEEK_SET)
        self.dirty = False

    def write(self, data: bytes) -> None:
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                done += os.write(self.fd, view[done:])
        except OSError:
            if done:  # never leave half a record behind a refused append
                os.ftruncate(self.fd, self.size)
                os.lseek(self.fd, self.size, os.SEEK_SET)
            raise
        self.size += len(data)
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            self.dirty = False
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Recovered:
    """What ``SegmentLog.open`` found: the tail to resume from."""

    tail: list[Record]            # records of the last segment
    checkpoints: list[Record]     # records of the checkpoint file
    torn_bytes: int = 0


class SegmentLog:
    """The files of one audit folder, opened by its single writer."""

    def __init__(self, root: Path, segment_bytes: int = 64 << 20) -> None:
        self.root = root
        self.segment_bytes = segment_bytes
        self._lock_fd: int | None = None
        self._segment: _AppendFile | None = None
        self._checkpoints: _AppendFile | None = None
        self.number = 0

    # -- opening -------------------------------------------------------------
    def open(self) -> Recovered:
        private_dirs(self.root / SEGMENTS)  # 0700 folders, 0600 files: entries name who did what
        self._lock()
        torn = 0
        for stale in (self.root / SEGMENTS).glob("*.tmp"):
            stale.unlink()  # a roll that never completed
        paths = segment_paths(self.root)
        if not paths:
            path = segment_path(self.root, 1)
            _write_private(path, MAGIC)
            fsync_dir(path.parent)
            paths = [(1, path)]
        self.number, path = paths[-1]
        data = path.read_bytes()
        tail: list[Record] = []
        try:
            tail.extend(parse(data, path, self.number, check_hash=True))
        except Damaged as exc:
            if not exc.tail:
                raise AuditStorageError(f"audit log damaged: {exc}") from exc
            if exc.offset < len(MAGIC):  # a brand-new file torn inside its magic
                data = MAGIC
                _write_private(path, MAGIC)
            else:
                torn += len(data) - exc.offset
                data = _cut(path, data, exc.offset, self.root, exc.reason)
        self._segment = _AppendFile(path, len(data))
        checkpoints = self._open_checkpoints()
        return Recovered(tail, checkpoints, torn)

    def _lock(self) -> None:
        """One writer per folder: an exclusive flock on LOCK, which holds the writer's pid
        so that a refusal names the holder (the lock itself dies with the process)."""
        fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = (f"process {holder}" if holder.isdigit() and int(holder) != os.getpid()
                   else "another writer in this process" if holder.isdigit()
                   else "another process")
            raise AuditStorageError(f"audit log {self.root} is in use by {who}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open_checkpoints(self) -> list[Record]:
        path = self.root / CHECKPOINTS
        if not path.exists():
            _write_private(path, MAGIC)
        found, damage = read_checkpoints(self.root)
        data = path.read_bytes()
        if damage is not None:
            if not damage.tail:
                raise AuditStorageError(f"audit checkpoint file damaged: {damage}")
            data = _cut(path, data, max(damage.offset, len(MAGIC)), self.root, damage.reason)
            if len(data) < len(MAGIC):
                _write_private(path, MAGIC)
                data = MAGIC
        self._checkpoints = _AppendFile(path, len(data))
        return found

    # -- writing -------------------------------------------------------------
    @property
    def segment_size(self) -> int:
        assert self._segment is not None
        return self._segment.size

    def append(self, data: bytes) -> None:
        assert self._segment is not None
        self._segment.write(data)

    def sync(self) -> None:
        if self._segment is not None:
            self._segment.sync()

    def add_checkpoint(self, record: bytes) -> None:
        """A checkpoint: into the log, fsynced, then into the checkpoint file, fsynced.

        In this order, the checkpoint file never names entries a power loss could take.
        """
        self.append(record)
        self.commit_checkpoint(record)

    def commit_checkpoint(self, record: bytes) -> None:
        """The rest of ``add_checkpoint`` once the record is in the log: fsync the log,
        then append the record to the checkpoint file."""
        assert self._segment is not None
        self._segment.sync()
        self.record_checkpoint(record)

    def record_checkpoint(self, record: bytes) -> None:
        """Append to the checkpoint file only (also used to repair it after a crash)."""
        assert self._checkpoints is not None
        self._checkpoints.write(record)
        self._checkpoints.sync()

    def roll(self, anchor: bytes) -> None:
        """Start the next segment with ``anchor`` (the checkpoint just written)."""
        assert self._segment is not None
        self._segment.sync()
        number = self.number + 1
        final = segment_path(self.root, number)
        temp = final.with_suffix(".tmp")
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                       "wb") as handle:
            handle.write(MAGIC + anchor)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
        fsync_dir(final.parent)
        self._segment.close()
        self._segment = _AppendFile(final, len(MAGIC) + len(anchor))
        self.number = number

    def close(self) -> None:
        for handle in (self._segment, self._checkpoints):
            if handle is not None:
                handle.sync()
                handle.close()
        self._segment = self._checkpoints = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class BlockIndex:
    """Blocks by CID, read from the folder on demand (the store is content-addressed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._where: dict[bytes, tuple[int, int, int]] = {}

    def _build(self) -> None:
        self._where.clear()
        try:
            for record in iter_log(self.root):
                self._where[record.cid] = (record.segment, record.offset, record.end)
        except Damaged:
            pass

    def get(self, cid: bytes) -> bytes | None:
        if cid not in self._where:
            self._build()
        place = self._where.get(cid)
        if place is None:
            return None
        segment, offset, end = place
        with open(segment_path(self.root, segment), "rb") as handle:
            handle.seek(offset)
            data = handle.read(end - offset)
        _, body = read_varint(data, 0)
        block = data[body + CID_LENGTH:]
        return block if hashlib.sha256(block).digest() == cid[4:] else None

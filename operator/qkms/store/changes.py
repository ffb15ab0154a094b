"""The store's change feed: which key records other processes of this data dir wrote.

Every catalog write appends the key's name to ``<store>/changes`` (one short line, one
``O_APPEND`` write, after the record itself is in place).  Every other process over the
same store (a data-plane worker, a replica, ``qkms keys revoke``) looks before each use of
a key and re-reads the records named since its last look, so a rotation or revocation
through one process is honoured by the next request served by any other, well before the
catalog TTL (the ceiling when the feed is missing).  The look is one read of shared
memory: each note then counts up ``<store>/changes.seq`` (8 bytes every process maps;
the increment under ``flock``), and only when that count moved does a reader ``fstat``
and read the file (a process that cannot map it does so every time).  When the file grows
past ``LIMIT`` the writer appends ``RESTART`` and replaces it with an empty one; a reader
that reads ``RESTART`` opens the new file and re-reads every record.

A store that hears of changes itself (the Kubernetes store's watch of its Secrets) gives
the catalog ``Notices`` instead: the same ``poll``, filled by the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Protocol

FILE = "changes"
SEQ = "changes.seq"
_COUNT = struct.Struct("<Q")
LIMIT = 1 << 20
RESTART = "\x00restart"
RELOAD_ALL = None


def parse_names(data: bytes) -> tuple[list[str], bool]:
    """(the names of the complete lines of ``data``, whether the feed restarted); a torn
    last line is left for later."""
    text = data[: data.rfind(b"\n") + 1].decode("utf-8", "replace")
    names = [line for line in text.split("\n") if line]
    return [n for n in names if n != RESTART], RESTART in names


class ChangeSource(Protocol):
    """What the catalog follows: ``ChangeFeed`` (a data dir's file) or ``Notices``."""

    def note(self, name: str) -> None: ...  # this process wrote ``name``'s record
    def poll(self) -> list[str] | None: ...  # names changed since; None: re-read all
    def close(self) -> None: ...


class Notices:
    """Changes a store heard of itself, from any thread (its watch), for ``poll``: the
    names of records others wrote, or ``RELOAD_ALL`` after the store lost track (it
    listed everything again).  ``note`` does nothing: the store's watch tells the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: list[str] = []
        self._all = False

    def heard(self, name: str) -> None:
        with self._lock:
            self._names.append(name)

    def heard_all(self) -> None:
        with self._lock:
            self._all = True

    def note(self, name: str) -> None:
        pass

    def poll(self) -> list[str] | None:
        if not self._names and not self._all:  # the usual case, without the lock
            return []
        with self._lock:
            names, everything = self._names, self._all
            self._names, self._all = [], False
        return RELOAD_ALL if everything else names

    def close(self) -> None:
        pass


class ChangeFeed:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / FILE
        self._fd: int | None = None
        self._offset = 0
        self._count: mmap.mmap | None = None
        self._count_fd: int | None = None
        self._seen = -1
        self._map_count()
        self._open(at_end=True)  # what came before is loaded already

    def _map_count(self) -> None:
        """Map ``changes.seq`` (made if missing); without it, every poll reads the file."""
        with contextlib.suppress(OSError, ValueError):
            fd = os.open(self.path.with_name(SEQ), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < _COUNT.size:
                    os.ftruncate(fd, _COUNT.size)  # zeros; another process's count stays
                self._count = mmap.mmap(fd, _COUNT.size)
            except (OSError, ValueError):
                os.close(fd)
                raise
            self._count_fd = fd
            self._seen = _COUNT.unpack_from(self._count)[0]

    def _count_up(self) -> None:
        if self._count is None or self._count_fd is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self._count_fd, fcntl.LOCK_EX)
            try:
                _COUNT.pack_into(self._count, 0, _COUNT.unpack_from(self._count)[0] + 1)
            finally:
                fcntl.flock(self._count_fd, fcntl.LOCK_UN)

    def _open(self, *, at_end: bool) -> bool:
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600)
            if self._fd is not None:
                os.close(self._fd)
            self._fd = fd
            self._offset = os.fstat(fd).st_size if at_end else 0
            return True
        return False

    def note(self, name: str) -> None:
        """Tell the other processes ``name``'s record changed (best effort: the TTL stays)."""
        self._append(name.replace("\n", " ").replace("\x00", " "))
        self._count_up()  # after the line is in the file: a reader that sees it finds it

    def _append(self, line: str) -> int:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > LIMIT and line != RESTART:
                self._append(RESTART)  # readers of the old file learn it was replaced
                fresh = self.path.with_name(f".{FILE}-{os.getpid()}")
                fresh.write_bytes(b"")
                os.chmod(fresh, 0o600)
                os.replace(fresh, self.path)
            return size
        except OSError:
            return 0

    def poll(self) -> list[str] | None:
        """Names changed since the last poll; ``RELOAD_ALL`` (None) if the feed restarted;
        [] when nothing changed (the usual case: one read of the mapped count)."""
        count = -1
        if self._count is not None:
            count = _COUNT.unpack_from(self._count)[0]
            if count == self._seen:
                return []
        if self._fd is None:
            if not self._open(at_end=False):
                return []
        assert self._fd is not None
        try:
            size = os.fstat(self._fd).st_size
            if size <= self._offset:
                self._seen = count  # a count moved past what the file says: caught up
                return []
            data = os.pread(self._fd, size - self._offset, self._offset)
        except OSError:
            return []
        self._offset += data.rfind(b"\n") + 1
        if self._offset == size:  # nothing torn left to read: the count is caught up
            self._seen = count
        names, restarted = parse_names(data)
        if restarted:
            self._open(at_end=False)
            return RELOAD_ALL
        return names

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._count is not None and self._count_fd is not None:
            self._count.close()
            os.close(self._count_fd)
            self._count = self._count_fd = None

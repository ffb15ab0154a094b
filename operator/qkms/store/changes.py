"""The store's change feed: which key records other processes of this data dir wrote.

Every catalog write appends the key's name to ``<store>/changes`` (one short line, one
``O_APPEND`` write, after the record itself is in place).  Every other process over the
same store (a data-plane worker, a replica, ``qkms keys revoke``) checks the size of its
open copy of the file before each use of a key, one ``fstat``, and re-reads the records
named since its last look: a rotation or revocation through one process is honoured by
the next request served by any other, well before the catalog TTL (the ceiling when the
feed is missing).  When the file grows past ``LIMIT`` the writer appends ``RESTART`` and
replaces it with an empty one; a reader that reads ``RESTART`` opens the new file and
re-reads every record.

A store that hears of changes itself (the Kubernetes store's watch of its Secrets) gives
the catalog ``Notices`` instead: the same ``poll``, filled by the store.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Protocol

FILE = "changes"
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
        self._open(at_end=True)  # what came before is loaded already

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
        [] when nothing changed (the usual case: one ``fstat``)."""
        if self._fd is None:
            if not self._open(at_end=False):
                return []
        assert self._fd is not None
        try:
            size = os.fstat(self._fd).st_size
            if size <= self._offset:
                return []
            data = os.pread(self._fd, size - self._offset, self._offset)
        except OSError:
            return []
        self._offset += data.rfind(b"\n") + 1
        names, restarted = parse_names(data)
        if restarted:
            self._open(at_end=False)
            return RELOAD_ALL
        return names

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

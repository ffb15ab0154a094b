"""The store's change feed: which key records other processes of this data dir wrote.

Every catalog write appends the key's name to ``<store>/changes`` (one short line, one
``O_APPEND`` write, after the record itself is in place).  Every other process over the
same store (a data-plane worker, a replica, ``qkms keys revoke``) checks the file's size
before each use of a key, one ``stat``, and re-reads the records named since its last
look: a rotation or revocation through one process is honoured by the next request
served by any other, well before the catalog TTL (the ceiling when the feed is
missing).  The file is replaced by an empty one when it grows past ``LIMIT``; a reader
that sees another inode or a shorter file re-reads every record.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILE = "changes"
LIMIT = 1 << 20
RELOAD_ALL = None


def parse_names(data: bytes) -> list[str]:
    """The names of the complete lines of ``data`` (a torn last line is left for later)."""
    text = data[: data.rfind(b"\n") + 1].decode("utf-8", "replace")
    return [line for line in text.split("\n") if line]


class ChangeFeed:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / FILE
        self._where = str(self.path)  # os.stat on a str: the check runs on every key use
        self._mark: tuple[int, int] | None = None  # (inode, offset read up to)
        with contextlib.suppress(OSError):
            stat = os.stat(self.path)
            self._mark = (stat.st_ino, stat.st_size)  # what came before is loaded already

    def note(self, name: str) -> None:
        """Tell the other processes ``name``'s record changed (best effort: the TTL stays)."""
        line = (name.replace("\n", " ") + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > LIMIT:
                self._restart()
        except OSError:
            pass

    def _restart(self) -> None:
        fresh = self.path.with_name(f".{FILE}-{os.getpid()}")
        fresh.write_bytes(b"")
        os.chmod(fresh, 0o600)
        os.replace(fresh, self.path)

    def poll(self) -> list[str] | None:
        """Names changed since the last poll; ``RELOAD_ALL`` (None) if the feed restarted;
        [] when nothing changed (the usual case: one ``stat``)."""
        try:
            stat = os.stat(self._where)
        except OSError:
            return []
        mark = self._mark
        if mark is not None and mark == (stat.st_ino, stat.st_size):
            return []
        if mark is None or mark[0] != stat.st_ino or stat.st_size < mark[1]:
            start, restarted = 0, mark is not None
        else:
            start, restarted = mark[1], False
        try:
            with open(self.path, "rb") as handle:
                handle.seek(start)
                data = handle.read(stat.st_size - start)
        except OSError:
            return []
        consumed = data.rfind(b"\n") + 1
        self._mark = (stat.st_ino, start + consumed)
        return RELOAD_ALL if restarted else parse_names(data)

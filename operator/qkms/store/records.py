"""Record stores: opaque, already-sealed blobs addressed by (kind, name).

The store never sees plaintext key material; it only has to be durable and
atomic.  ``FileRecordStore`` writes to a temp file, fsyncs it, renames it
over the old record and fsyncs the directory, so a crash mid-write leaves
either the old record or the new one, never a torn one.
"""

from __future__ import annotations

import builtins
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from qkms.errors import InvalidInputError

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,250}$")
SUFFIX = ".rec"


def check_record_name(kind: str, name: str) -> None:
    for field, value in (("record kind", kind), ("record name", name)):
        if not _SAFE.fullmatch(value):
            raise InvalidInputError(field, f"{value!r} must match {_SAFE.pattern}")


class RecordStore(Protocol):
    def get(self, kind: str, name: str) -> bytes | None: ...
    def put(self, kind: str, name: str, data: bytes) -> None: ...
    def create(self, kind: str, name: str, data: bytes) -> bool: ...  # False: it exists
    def delete(self, kind: str, name: str) -> None: ...
    def list(self, kind: str) -> list[str]: ...
    def kinds(self) -> builtins.list[str]: ...  # `list` here is the method above
    def describe(self) -> str: ...


class FileRecordStore:
    """Records as files ``<root>/<kind>/<name>.rec`` with atomic replacement; files are
    0600 (``mkstemp``) and folders 0700."""

    def __init__(self, root: Path | str) -> None:
        from .kek import private_dirs

        self.root = Path(root)
        private_dirs(self.root)

    def describe(self) -> str:
        return f"files under {self.root}"

    def _path(self, kind: str, name: str) -> Path:
        check_record_name(kind, name)
        return self.root / kind / f"{name}{SUFFIX}"

    def get(self, kind: str, name: str) -> bytes | None:
        try:
            return self._path(kind, name).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, kind: str, name: str, data: bytes) -> None:
        self._write(kind, name, data, exclusive=False)

    def create(self, kind: str, name: str, data: bytes) -> bool:
        """Write only if no record is there (a hard link fails on an existing name), so
        two processes making the same new key cannot overwrite each other."""
        return self._write(kind, name, data, exclusive=True)

    def _write(self, kind: str, name: str, data: bytes, *, exclusive: bool) -> bool:
        path = self._path(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if exclusive:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                finally:
                    Path(tmp).unlink(missing_ok=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        return True

    def delete(self, kind: str, name: str) -> None:
        path = self._path(kind, name)
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def kinds(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def list(self, kind: str) -> list[str]:
        folder = self.root / kind
        if not folder.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}")
                      if not p.name.startswith(".tmp-"))


class MemoryRecordStore:
    """A store that forgets on exit: for tests and throwaway demos."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], bytes] = {}

    def describe(self) -> str:
        return "memory"

    def get(self, kind: str, name: str) -> bytes | None:
        return self._data.get((kind, name))

    def put(self, kind: str, name: str, data: bytes) -> None:
        check_record_name(kind, name)
        self._data[(kind, name)] = bytes(data)

    def create(self, kind: str, name: str, data: bytes) -> bool:
        check_record_name(kind, name)
        if (kind, name) in self._data:
            return False
        self._data[(kind, name)] = bytes(data)
        return True

    def delete(self, kind: str, name: str) -> None:
        self._data.pop((kind, name), None)

    def kinds(self) -> list[str]:
        return sorted({k for k, _ in self._data})

    def list(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._data if k == kind)


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""KEK rotation: re-seal every record of the embedded store under a new master key.

Crash-safe by ordering: the old KEK is saved beside the new one
(``<kek>.old``) before the new one replaces it, and the service opens records
under either while ``.old`` exists.  ``.old`` is removed only after every
record has been re-sealed, and a rewrap that finds ``.old`` first finishes
the interrupted one.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from qkms.config import Settings

from .kek import Sealer, load_or_create_kek, parse_kek
from .layout import check_kek
from .records import FileRecordStore
from .sealed import SealedStore


def _write_kek(path: Path, kek: bytes) -> None:
    import base64

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-kek-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(kek) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _reseal_all(records: FileRecordStore, current: bytes, old: bytes) -> int:
    sealed = SealedStore(records, Sealer(current, old))
    return sum(1 for _ in sealed.rewrap(records.kinds()))


def rewrap(settings: Settings, new_kek_file: Path | None = None,
           stores: list[Path] | None = None) -> int:
    """Returns how many records were re-sealed.  ``stores``: every store sealed under the
    KEK (each environment's, see ``qkms.store.layout``); default ``settings``' own."""
    kek_path = settings.kek_path
    old_path = kek_path.with_suffix(".old")
    folders = stores if stores is not None else [settings.data_dir / "store"]
    for folder in folders:
        check_kek(kek_path, folder)
    every = [FileRecordStore(folder) for folder in folders]
    current = load_or_create_kek(kek_path)
    count = 0
    if old_path.exists():  # finish an interrupted rewrap first
        old = parse_kek(old_path.read_bytes(), str(old_path))
        count += sum(_reseal_all(records, current, old) for records in every)
        old_path.unlink()
    new = (parse_kek(new_kek_file.read_bytes(), str(new_kek_file)) if new_kek_file
           else secrets.token_bytes(32))
    _write_kek(old_path, current)
    _write_kek(kek_path, new)
    count += sum(_reseal_all(records, new, current) for records in every)
    old_path.unlink()
    return count

"""Sealing records under the key-encryption key (KEK) with AES-256-GCM.

A sealed blob is ``MAGIC || kek_id(8) || nonce(12) || ciphertext+tag``.  The
record's own address (kind and name) is the associated data, so a record
copied over another, edited, or truncated fails to open and is reported by
name.  A record that changes over time (a key's catalog record) is sealed as
``MAGIC2 || kek_id(8) || generation(8) || nonce(12) || ciphertext+tag`` with its
monotonic generation bound into the associated data too, so the generation can be
read before opening and cannot be edited: an older copy put back is recognised
as older (``store.catalog`` checks it against the audit chain).

``kek_id`` (a digest prefix of the KEK) lets a store hold records under
an old and a new KEK during ``qkms keys rewrap`` and tells a wrong KEK apart
from tampering.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qkms.config import INSECURE_KEK, insecure_kek_allowed
from qkms.errors import InvalidInputError, RecordCorruptError

log = logging.getLogger("key-management:store")

MAGIC = b"QKS1"
MAGIC2 = b"QKS2"  # with a generation
MAGICS = (MAGIC, MAGIC2)
_HEADER = len(MAGIC) + 8 + 12


def kek_id(kek: bytes) -> bytes:
    return hashlib.sha256(b"qkms-kek-id" + kek).digest()[:8]


INSECURE_OVERRIDE = INSECURE_KEK


def check_kek_mode(path: Path) -> None:
    """Refuse a key file that its group or others may read or write (it seals every key),
    unless ``QKMS_ALLOW_INSECURE_KEK=1`` says that this is known and wanted."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    if insecure_kek_allowed():
        log.warning("%s is readable by group or others (mode %o); used anyway because %s is "
                    "set", path, mode, INSECURE_OVERRIDE)
        return
    raise InvalidInputError("QKMS_MASTER_KEY_FILE",
                            f"{path} is readable by group or others (mode {mode:o}): run "
                            f"`chmod 600 {path}`, or set {INSECURE_OVERRIDE}=1 to use it anyway")


def private_dirs(path: Path) -> None:
    """Make ``path`` and any missing parent with mode 0700 (``mkdir(parents=True)`` gives
    the parents the umask's mode instead)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass


def load_or_create_kek(path: Path | str) -> bytes:
    """Read the KEK (base64 or 32 raw bytes), refusing one that others may read; create it
    with mode 0600 if missing."""
    path = Path(path)
    if not path.exists():
        private_dirs(path.parent)
        kek = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(base64.b64encode(kek) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        log.warning("created a new master key (KEK) at %s with mode 0600; back it up: "
                    "without it the embedded store cannot be opened", path)
        return kek
    check_kek_mode(path)
    return parse_kek(path.read_bytes(), str(path))


def parse_kek(content: bytes, source: str) -> bytes:
    if len(content) == 32:
        return content
    try:
        kek = base64.b64decode(content.strip(), validate=True)
    except ValueError:
        kek = b""
    if len(kek) != 32:
        raise InvalidInputError("QKMS_MASTER_KEY_FILE",
                                f"{source} must hold 32 bytes, raw or base64")
    return kek


def _aad(address: str, generation: bytes) -> bytes:
    return address.encode() + b"\x00generation\x00" + generation


class Sealer:
    """Seals under the current KEK; opens under any KEK it was given."""

    def __init__(self, kek: bytes, *older: bytes) -> None:
        self._current = kek_id(kek)
        self._keys = {kek_id(k): AESGCM(k) for k in (kek, *older)}

    @property
    def kek_id(self) -> str:
        return self._current.hex()

    def seal(self, plaintext: bytes, address: str, generation: int | None = None) -> bytes:
        nonce = secrets.token_bytes(12)
        if generation is None:
            body = self._keys[self._current].encrypt(nonce, plaintext, address.encode())
            return MAGIC + self._current + nonce + body
        number = generation.to_bytes(8, "big")
        body = self._keys[self._current].encrypt(nonce, plaintext, _aad(address, number))
        return MAGIC2 + self._current + number + nonce + body

    def open(self, blob: bytes, address: str) -> bytes:
        return self.open_generation(blob, address)[0]

    def open_generation(self, blob: bytes, address: str) -> tuple[bytes, int | None]:
        """The plaintext and the generation it was sealed with (None for a plain record)."""
        versioned = blob.startswith(MAGIC2)
        header = _HEADER + (8 if versioned else 0)
        if len(blob) < header + 16 or not blob.startswith(MAGICS):
            raise RecordCorruptError(address, "truncated or not a sealed record")
        key = self._keys.get(blob[4:12])
        if key is None:
            raise RecordCorruptError(address, f"sealed under an unknown KEK {blob[4:12].hex()}")
        number = blob[12:20] if versioned else None
        aad = _aad(address, number) if number is not None else address.encode()
        try:
            plaintext = key.decrypt(blob[header - 12:header], blob[header:], aad)
        except InvalidTag:
            raise RecordCorruptError(
                address, "authentication failed (edited, truncated or swapped)") from None
        return plaintext, int.from_bytes(number, "big") if number is not None else None

    def is_current(self, blob: bytes) -> bool:
        return blob[4:12] == self._current

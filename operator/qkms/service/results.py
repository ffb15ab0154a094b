"""What the service returns: an operation's result (secret outputs kept out of ``repr``)
and a rotation's."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger("key-management:service")


@dataclass(frozen=True)
class OperationResult:
    """The result of ``use_key``; secret outputs are kept out of ``repr``."""

    operation: str
    key_id: str
    name: str
    version: int
    algorithm: str
    signature: bytes | None = None
    ciphertext: str | bytes | None = None  # ENCRYPT: token; ENCAPSULATE: KEM ciphertext
    plaintext: bytes | None = field(default=None, repr=False)
    shared_secret: bytes | None = field(default=None, repr=False)
    derived_key: bytes | None = field(default=None, repr=False)
    recovery_id: int | None = None  # SIGN with recovery_id (ECDSA-secp256k1): 0 or 1

    def varied(self, **outputs: Any) -> OperationResult:
        """A copy with ``outputs`` (hot path: a frozen dataclass's ``__init__`` sets each
        field through ``object.__setattr__``; the outputs are trusted to be fields)."""
        copy = object.__new__(OperationResult)
        copy.__dict__.update(self.__dict__, **outputs)
        return copy


@dataclass(frozen=True)
class RotationResult:
    name: str
    old_key_id: str
    new_key_id: str
    reason: str
    version: int
    algorithm: str
    old_state: str
    grace_until: datetime | None = None
    replayed: bool = False

"""Signed checkpoints: (size, head CID, time) under the operator's audit key.

A checkpoint lets a verifier detect a truncated or rewritten chain, not only
an edited entry: it fixes how long the chain was and what its head was.  The
signature covers the canonical DAG-CBOR of the unsigned part, whose ``type``
(``qkms.audit.checkpoint.v1``) keeps these bytes apart from anything else the
key might sign.  The key is the hybrid Ed25519+ML-DSA-65 from the key engine,
so the trail stays trustworthy if either half is broken.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .encoding import CHECKPOINT_TYPE, cid_str, decode, encode, parse_time, signed_part

ALGORITHM = "Ed25519+ML-DSA-65"

Signer = Callable[[bytes], Awaitable[tuple[bytes, str, bytes]]]
"""Signs a checkpoint body; returns (signature, key ID, raw public key)."""

SignatureCheck = Callable[[str, bytes, bytes, bytes], bool]
"""Whether (algorithm, raw public key, message, signature) verifies: given, like the signer,
by the layer that holds the algorithms (``qkms.crypto.verify_signature``), so that the audit
trail reads and checks its chain without importing them."""


@dataclass(frozen=True)
class Checkpoint:
    cid: bytes
    size: int
    head: bytes
    time: datetime
    previous: bytes | None
    key_id: str
    algorithm: str
    public_key: bytes
    signature: bytes
    body: bytes  # the signed bytes

    @property
    def cid_text(self) -> str:
        return cid_str(self.cid)

    def to_dict(self) -> dict[str, Any]:
        return {"cid": self.cid_text, "size": self.size, "head": cid_str(self.head),
                "time": self.time.isoformat(), "key_id": self.key_id,
                "algorithm": self.algorithm}


def parse_checkpoint(cid: bytes, block: bytes) -> Checkpoint:
    """A checkpoint from its block; ``ValueError`` if the block is not one."""
    try:
        value = decode(block)
        if not isinstance(value, dict) or value.get("type") != CHECKPOINT_TYPE:
            raise ValueError("not a checkpoint block")
        signer = value["signer"]
        if encode(value) != block:  # e.g. a link turned into a byte string of the same CID
            raise ValueError("checkpoint is not canonical DAG-CBOR")
        return Checkpoint(
            cid=cid, size=int(value["size"]), head=bytes(value["head"]),
            time=parse_time(value["time"]),
            previous=None if value["previous"] is None else bytes(value["previous"]),
            key_id=str(signer["keyId"]), algorithm=str(signer["algorithm"]),
            public_key=bytes(signer["publicKey"]), signature=bytes(value["signature"]),
            body=signed_part(value),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed checkpoint: {exc}") from None


def signature_valid(checkpoint: Checkpoint, check: SignatureCheck,
                    public_key: bytes | None = None) -> bool:
    """Whether the checkpoint's signature verifies under ``public_key`` (default: its own)."""
    return check(checkpoint.algorithm,
                 public_key if public_key is not None else checkpoint.public_key,
                 checkpoint.body, checkpoint.signature)

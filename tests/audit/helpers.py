"""Helpers for the audit tests: a real hybrid audit key, entries, and raw log surgery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from qkms.audit.chain import AuditChain
from qkms.audit.encoding import section
from qkms.audit.entry import Actor, AuditEntry, digest
from qkms.audit.store import MAGIC, Record, parse, segment_paths
from qkms.crypto import suite_for

HYBRID = "Ed25519+ML-DSA-65"
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@cache
def _key(name: str) -> tuple[bytes, bytes]:
    suite = suite_for(HYBRID)
    private = suite.generate()
    return private, suite.load_private(private).public().raw()


class AuditKey:
    """The operator's audit key as the chain sees it: an async signer."""

    def __init__(self, name: str = "audit", private: bytes | None = None) -> None:
        if private is None:
            self.private, self.public = _key(name)
        else:
            self.private = private
            self.public = suite_for(HYBRID).load_private(private).public().raw()
        self.key_id = f"key_dev_{name}"
        self.calls = 0

    async def __call__(self, data: bytes) -> tuple[bytes, str, bytes]:
        self.calls += 1
        return suite_for(HYBRID).load_private(self.private).sign(data), self.key_id, self.public


def make_entry(i: int = 0, **fields: object) -> AuditEntry:
    values: dict[str, object] = dict(
        time=START + timedelta(seconds=i), environment="dev", operation="SIGN",
        result="success", actor=Actor("SERVICE_ACCOUNT", "system:serviceaccount:pay:api"),
        key_name="payments-signing", key_id="key_dev_0123456789abcdef", version=1,
        digests={"data": digest(f"message {i}".encode())}, details={},
    )
    values.update(fields)
    return AuditEntry(**values)  # type: ignore[arg-type]


async def filled(folder: Path, count: int, **options: object) -> AuditChain:
    """A closed chain of ``count`` entries under ``folder``."""
    chain = AuditChain(folder, **options)  # type: ignore[arg-type]
    async with chain:
        for i in range(count):
            await chain.append(make_entry(i))
    return chain


def segment_records(folder: Path, number: int | None = None) -> list[Record]:
    paths = segment_paths(folder)
    path = dict(paths)[number] if number is not None else paths[-1][1]
    return list(parse(path.read_bytes(), path, 0, check_hash=False))


def write_segment(folder: Path, records: list[Record | tuple[bytes, bytes]],
                  number: int | None = None) -> None:
    """Rewrite one segment from (possibly tampered) records."""
    paths = segment_paths(folder)
    path = dict(paths)[number] if number is not None else paths[-1][1]
    parts = [MAGIC]
    for record in records:
        cid, block = (record.cid, record.block) if isinstance(record, Record) else record
        parts.append(section(cid, block))
    path.write_bytes(b"".join(parts))

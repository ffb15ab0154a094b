"""Audit chain: durable append and verify rates, and bytes per entry.

The reference is a bare loop of JSON + sha256 hash-chaining over the same
entries, in memory, measured in the same run; each figure is best of three.
Appends use a real Ed25519+ML-DSA-65 checkpoint signer (every 1000 entries).
The targets are issue 18's: fsync append at 32 tasks >= 20,000/s and
``verify --deep`` >= 100,000 entries/s; the other lines have none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import time
from pathlib import Path

from qkms.audit.chain import AuditChain
from qkms.audit.entry import Actor, AuditEntry, digest
from qkms.audit.store import segment_paths
from qkms.audit.verify import verify_folder
from qkms.crypto import suite_for, verify_signature

COUNT = 20_000
VERIFY_COUNT = 100_000
OPERATIONS = ("SIGN", "VERIFY", "ENCRYPT", "DECRYPT", "ROTATE", "CREATE")


def entries(count: int) -> list[AuditEntry]:
    from datetime import UTC, datetime, timedelta

    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [AuditEntry(
        time=start + timedelta(milliseconds=i), environment="prod",
        operation=OPERATIONS[i % len(OPERATIONS)], result="denied" if i % 50 == 0 else "success",
        actor=Actor("SERVICE_ACCOUNT", f"system:serviceaccount:team{i % 7}:api"),
        key_name=f"team{i % 7}-signing", key_id=f"key_prod_{i % 7:016x}", version=1 + i % 3,
        reason="Key is revoked" if i % 50 == 0 else None,
        digests={"data": digest(i.to_bytes(8, "big"))}) for i in range(count)]


def reference(items: list[AuditEntry]) -> float:
    """Entries/s of a bare JSON + sha256 hash chain (no storage, no signatures)."""
    start, prev = time.perf_counter(), ""
    for entry in items:
        data = entry.to_dict()
        data["prev"] = prev
        prev = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return len(items) / (time.perf_counter() - start)


def signer():
    suite = suite_for("Ed25519+ML-DSA-65")
    key = suite.load_private(suite.generate())
    public = key.public().raw()

    async def sign(data: bytes) -> tuple[bytes, str, bytes]:
        return key.sign(data), "key_prod_audit", public

    return sign


async def append_rate(items: list[AuditEntry], sync: str, tasks: int) -> tuple[float, Path]:
    folder = Path(tempfile.mkdtemp(prefix="qkms-bench-audit-"))
    chain = AuditChain(folder, signer=signer(), checkpoint_every=1000, sync=sync)
    await chain.open()
    share = len(items) // tasks

    async def worker(part: list[AuditEntry]) -> None:
        for entry in part:
            await chain.append(entry)

    start = time.perf_counter()
    await asyncio.gather(*(worker(items[i * share:(i + 1) * share]) for i in range(tasks)))
    elapsed = time.perf_counter() - start
    await chain.close()
    return share * tasks / elapsed, folder


def on_disk(folder: Path) -> int:
    return sum(path.stat().st_size for _, path in segment_paths(folder))


async def main() -> None:
    import shutil

    items = entries(COUNT)
    print(f"== audit chain: {COUNT} entries, checkpoint every 1000 (Ed25519+ML-DSA-65) ==")
    ref = max(reference(items) for _ in range(3))
    print(f"{'reference: JSON + sha256 chain, in memory':<52} {ref:>10.0f} entries/s")
    for label, sync, tasks, goal in (
            ("durable append, fsync group commit, 1 task", "fsync", 1, ""),
            ("durable append, fsync group commit, 32 tasks", "fsync", 32, "  (target >= 20000/s)"),
            ("durable append, write() (kill -9 safe), 1 task", "write", 1, ""),
            ("durable append, write() (kill -9 safe), 32 tasks", "write", 32, "")):
        best, folder = 0.0, None
        for _ in range(3):
            rate, made = await append_rate(items, sync, tasks)
            if rate > best:
                if folder is not None:
                    shutil.rmtree(folder)
                best, folder = rate, made
            else:
                shutil.rmtree(made)
        print(f"{label:<52} {best:>10.0f} entries/s  ratio {best / ref:.2f}{goal}")
        assert folder is not None
        size = on_disk(folder)
        shutil.rmtree(folder)
    print(f"{'bytes per entry on disk (incl. checkpoints)':<52} {size / COUNT:>10.1f}")

    print(f"== verify: {VERIFY_COUNT} entries ==")
    _, folder = await append_rate(entries(VERIFY_COUNT), "write", 32)
    best = deep = 0.0
    for _ in range(3):
        start = time.perf_counter()
        result = verify_folder(folder, check=verify_signature)
        best = max(best, result.entries / (time.perf_counter() - start))
        assert result.ok, result.finding
        start = time.perf_counter()
        result = verify_folder(folder, deep=True, check=verify_signature)
        deep = max(deep, result.entries / (time.perf_counter() - start))
        assert result.ok, result.finding
    print(f"{'verify (hash, links, sequence, signatures)':<52} {best:>10.0f} entries/s  "
          f"ratio {best / ref:.2f}")
    print(f"{'verify --deep (+ strict decode, canonical re-encode)':<52} {deep:>10.0f} "
          f"entries/s  ratio {deep / ref:.2f}  (target >= 100000/s)")
    print(f"{'bytes per entry on disk (incl. checkpoints)':<52} "
          f"{on_disk(folder) / VERIFY_COUNT:>10.1f}")
    shutil.rmtree(folder)

"""Key engine: qkms (LOCAL_DEV) against raw ``cryptography`` in the same run.

Every qkms operation writes a durable audit entry, so the figures depend on the audit
sync mode: ``fsync`` (the default: an entry is acknowledged after a group-commit fsync,
so it survives power loss) and ``write`` (acknowledged after write(): survives kill -9,
fsynced every second). Sequential callers pay one fsync each; concurrent callers share
them, so the 32-caller line is what a busy data plane sees (32 calls gathered at a time;
one caller awaits each call itself, without the Task ``gather`` would add).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qkms.config import AuditOptions, Settings
from qkms.service import KeyManagementService

from .timing import compare, rate

MESSAGE = os.urandom(1024)


async def engine_ratios(sync: str, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        svc = KeyManagementService(Settings(data_dir=Path(tmp), audit=AuditOptions(sync=sync)))
        print(f"-- audit sync={sync}, {concurrency} caller(s) --")
        ed = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="bench")
        ml = await svc.create_key(usage="SIGNING", algorithm="ML-DSA-65", owner="bench")
        aes = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="bench")
        raw_ed, raw_ml = Ed25519PrivateKey.generate(), MLDSA65PrivateKey.generate()
        raw_aes = AESGCM(AESGCM.generate_key(256))

        def batch(key_id: str, operation: str):
            if concurrency == 1:  # one caller awaits its call: no Task, as a handler does
                return lambda: svc.use_key(key_id, operation, MESSAGE)

            async def run() -> None:
                await asyncio.gather(*(svc.use_key(key_id, operation, MESSAGE)
                                       for _ in range(concurrency)))
            return run

        for name, ours, reference in (
            ("use_key SIGN Ed25519 (1 KiB)", batch(ed.key_id, "SIGN"),
             lambda: raw_ed.sign(MESSAGE)),
            ("use_key SIGN ML-DSA-65 (1 KiB)", batch(ml.key_id, "SIGN"),
             lambda: raw_ml.sign(MESSAGE)),
            ("use_key ENCRYPT AES-256-GCM (1 KiB)", batch(aes.key_id, "ENCRYPT"),
             lambda: raw_aes.encrypt(os.urandom(12), MESSAGE, b"aad")),
        ):
            await compare(name, ours, reference, target=0.5, per_call=concurrency)
        await svc.close()


async def create_throughput() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        svc = KeyManagementService(Settings(data_dir=Path(tmp)))
        print("== create_key throughput (keys/s, durable: sealed, fsynced, audited) ==")
        for algorithm, count in (("Ed25519", 200), ("ML-DSA-65", 200), ("RSA-4096", 5)):
            start = time.perf_counter()
            for _ in range(count):
                await svc.create_key(usage="SIGNING", algorithm=algorithm, owner="bench")
            per_second = count / (time.perf_counter() - start)
            print(f"create_key {algorithm:<33} {per_second:>10.1f} keys/s")
        await svc.close()


async def main() -> None:
    print("== key engine: use_key through qkms vs the raw library ==")
    for sync, concurrency in (("fsync", 1), ("write", 1), ("fsync", 32)):
        await engine_ratios(sync, concurrency)
    await create_throughput()


__all__ = ["main", "rate"]

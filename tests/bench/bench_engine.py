"""Key engine: qkms (LOCAL_DEV) against raw ``cryptography`` in the same run."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qkms.config import Settings
from qkms.service import KeyManagementService

from .timing import compare

MESSAGE = os.urandom(1024)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        svc = KeyManagementService(Settings(data_dir=Path(tmp), audit_enabled=True))
        print("== key engine: use_key through qkms vs the raw library ==")
        ed = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="bench")
        raw_ed = Ed25519PrivateKey.generate()
        await compare("use_key SIGN Ed25519 (1 KiB)",
                      lambda: svc.use_key(ed.key_id, "SIGN", MESSAGE),
                      lambda: raw_ed.sign(MESSAGE), target=0.5)
        ml = await svc.create_key(usage="SIGNING", algorithm="ML-DSA-65", owner="bench")
        raw_ml = MLDSA65PrivateKey.generate()
        await compare("use_key SIGN ML-DSA-65 (1 KiB)",
                      lambda: svc.use_key(ml.key_id, "SIGN", MESSAGE),
                      lambda: raw_ml.sign(MESSAGE), target=0.5)
        aes = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="bench")
        raw_aes = AESGCM(AESGCM.generate_key(256))
        await compare("use_key ENCRYPT AES-256-GCM (1 KiB)",
                      lambda: svc.use_key(aes.key_id, "ENCRYPT", MESSAGE),
                      lambda: raw_aes.encrypt(os.urandom(12), MESSAGE, b"aad"), target=0.5)

        print("== create_key throughput (keys/s, durable: sealed, fsynced) ==")
        for algorithm, count in (("Ed25519", 200), ("ML-DSA-65", 200), ("RSA-4096", 5)):
            start = time.perf_counter()
            for _ in range(count):
                await svc.create_key(usage="SIGNING", algorithm=algorithm, owner="bench")
            per_second = count / (time.perf_counter() - start)
            print(f"create_key {algorithm:<33} {per_second:>10.1f} keys/s")

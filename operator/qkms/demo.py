"""``qkms demo``: the seed's examples, run end to end on the embedded store.

It uses a throwaway data dir unless ``--data-dir`` is given, and prints what
each step did (never private material), so a new user sees qkms work in one
command with no cluster and no cloud account.
"""

from __future__ import annotations

import secrets
import tempfile
from dataclasses import replace
from pathlib import Path

from qkms.config import Settings
from qkms.service import KeyManagementService


async def run_demo(settings: Settings, out=print) -> None:
    """``settings``: the data dir's (unscoped); the default ``.qkms`` means a throwaway one."""
    with tempfile.TemporaryDirectory(prefix="qkms-demo-") as tmp:
        kek = None
        if settings.data_dir == Path(".qkms"):
            # Thrown away at the end: its master key stays in memory (nothing to back up).
            settings, kek = replace(settings, data_dir=Path(tmp)), secrets.token_bytes(32)
        settings = settings.scoped()
        svc = KeyManagementService(settings, kek=kek)
        svc.on("auditEvent", lambda e: out(f"  audit #{e.sequence}: {e.operation} {e.result}"
                                           f" {e.key_id or e.key_name or ''}"))
        out(f"qkms demo: environment={settings.environment.value} "
            f"provider={svc.provider.type.value} data={settings.data_dir}")

        out("1. Ed25519 signing key, sign and verify")
        key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="user-service",
                                   rotation_schedule="P30D")
        sig = await svc.use_key(key.key_id, "SIGN", "message to sign",
                                actor={"type": "USER", "id": "user123"})
        ok = await svc.use_key(key.name, "VERIFY", "message to sign", signature=sig.signature)
        out(f"   {key.name} -> {key.key_id}: signature {len(sig.signature)} bytes, valid={ok}")

        out("2. AES-256-GCM encrypt and decrypt")
        aes = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM",
                                   owner="storage-service")
        token = await svc.use_key(aes.key_id, "ENCRYPT", "sensitive data")
        plain = await svc.use_key(aes.key_id, "DECRYPT", token)
        matches = plain.plaintext == b"sensitive data"
        out(f"   token {token.ciphertext[:40]}... decrypts: {matches}")

        out("3. Scheduled rotation with a 7-day grace period")
        rotated = await svc.rotate_key(key.key_id, reason="SCHEDULED", grace_period="P7D")
        still = await svc.use_key(rotated.old_key_id, "VERIFY", "message to sign",
                                  signature=sig.signature)
        out(f"   {rotated.old_key_id} -> {rotated.new_key_id}; old signature still verifies: "
            f"{still} (grace until {rotated.grace_until:%Y-%m-%d})")

        out("4. Emergency rotation (COMPROMISE revokes the old version at once)")
        emergency = await svc.rotate_key(key.name, reason="COMPROMISE", immediate=True)
        out(f"   {emergency.old_key_id} is now {emergency.old_state}")

        out("5. Post-quantum keys: Dilithium3 (ML-DSA-65) and Kyber768 (ML-KEM-768)")
        pqc = await svc.create_key(usage="SIGNING", algorithm="Dilithium3", owner="secure-service")
        pqc_sig = await svc.use_key(pqc.key_id, "SIGN", "quantum-safe")
        kem = await svc.create_key(usage="ENCRYPTION", algorithm="Kyber768",
                                   owner="secure-service")
        encap = await svc.use_key(kem.key_id, "ENCAPSULATE")
        decap = await svc.use_key(kem.key_id, "DECAPSULATE", encap.ciphertext)
        out(f"   {pqc.algorithm}: signature {len(pqc_sig.signature)} bytes; {kem.algorithm}: "
            f"shared secrets match: {decap.shared_secret == encap.shared_secret}")

        out("6. Hybrid signature: Ed25519 + ML-DSA-65 (safe if either half breaks)")
        hybrid = await svc.create_key(usage="SIGNING", algorithm="Ed25519+ML-DSA-65",
                                      owner="secure-service")
        hsig = await svc.use_key(hybrid.key_id, "SIGN", "both halves")
        valid = await svc.use_key(hybrid.key_id, "VERIFY", "both halves", signature=hsig.signature)
        out(f"   composite signature {len(hsig.signature)} bytes, valid={valid}")

        stats = await svc.get_statistics()
        health = await svc.health_check()
        out(f"statistics: {stats['keys']} keys, by algorithm {stats['by_algorithm']}, "
            f"rotations {stats['rotations']}")
        out(f"health: {health['status']}")

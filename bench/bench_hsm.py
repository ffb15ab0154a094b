"""HSM (SoftHSM2 over PKCS#11): qkms native signing against python-pkcs11 in the same run.

(a) ``use_key SIGN`` through qkms (audit on; a worker thread and the session lock per
call) against the same token key signed by python-pkcs11 directly (hash + C_Sign):
plain, inside ``asyncio.to_thread`` (the floor for any async caller), and with 16
concurrent qkms callers; (b) envelope keys (software, wrapped by the token's AES
key) next to native ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path

import pkcs11
from pkcs11 import MGF, Mechanism, ObjectClass

from qkms.config import Settings
from qkms.model.enums import ProviderType
from qkms.service import KeyManagementService
from tests.support.softhsm import start_softhsm

from .providers import MESSAGE, envelope_interleaved
from .ratios import blocking, concurrent, interleaved, sequential


def direct_signer(session, key_id: str, algorithm: str):
    private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_id)
    if algorithm == "ECDSA-P256":
        return lambda: private.sign(hashlib.sha256(MESSAGE).digest(), mechanism=Mechanism.ECDSA)
    if algorithm == "Ed25519":
        return lambda: private.sign(MESSAGE, mechanism=Mechanism.EDDSA)
    return lambda: private.sign(MESSAGE, mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                                mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hsm = start_softhsm(Path(tmp) / "softhsm")
        svc = KeyManagementService(Settings(provider=ProviderType.HSM, data_dir=Path(tmp),
                                            provider_options=hsm.options()))
        await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="bench")  # logs in
        # python-pkcs11's own session; the process is logged in already (login is per
        # process), and it stays open: closing it would log qkms out too.
        session = pkcs11.lib(hsm.library).get_token(token_label=hsm.label).open()
        print("== HSM (SoftHSM2): use_key SIGN through qkms vs python-pkcs11 directly ==")
        keys = {}
        for algorithm in ("ECDSA-P256", "Ed25519", "RSA-2048"):
            key = keys[algorithm] = await svc.create_key(usage="SIGNING", algorithm=algorithm,
                                                         owner="bench")
            direct = direct_signer(session, key.key_id, algorithm)

            def ours(key=key):
                return svc.use_key(key.key_id, "SIGN", MESSAGE)
            await interleaved(f"SIGN {algorithm} native (1 KiB)", sequential(ours),
                              blocking(direct), target=0.8)
            await interleaved("  vs python-pkcs11 in asyncio.to_thread", sequential(ours),
                              sequential(lambda direct=direct: asyncio.to_thread(direct)))
            await interleaved("  16 concurrent qkms callers vs python-pkcs11", concurrent(ours),
                              blocking(direct))

        print("== envelope keys (software, wrapped by the token AES key) next to native ==")
        native = keys["ECDSA-P256"]
        await envelope_interleaved(svc, native, ("ECDSA-secp256k1", "ML-DSA-65"))
        svc.provider.envelope.cache_seconds = 60.0
        aes = await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="bench")
        chacha = await svc.create_key(usage="ENCRYPTION", algorithm="ChaCha20-Poly1305",
                                      owner="bench")
        await interleaved("ENCRYPT ChaCha20-Poly1305 envelope (cached)",
                          sequential(lambda: svc.use_key(chacha.key_id, "ENCRYPT", MESSAGE)),
                          sequential(lambda: svc.use_key(aes.key_id, "ENCRYPT", MESSAGE)),
                          labels=("envelope", "native AES"))
        session.close()

"""AZURE_KEY_VAULT (the REST emulator, HTTPS on loopback): qkms against the SDK directly.

(a) ``use_key SIGN`` through qkms against ``CryptographyClient.sign`` called directly on
the same key with its own KeyClient (same transport options, its own connections):
sequentially, and with 16 concurrent qkms callers; (b) envelope keys (software,
data key wrapped by the vault) next to native ones.  The emulator runs in this
process, so both sides share its latency; the figures are ratios, not vault speeds.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import SignatureAlgorithm

from qkms.config import Settings
from qkms.model.enums import ProviderType
from qkms.providers.azure import StaticTokenCredential
from qkms.service import KeyManagementService
from tests.support.azure_keyvault import emulator_options, start_emulator

from .providers import MESSAGE, envelope_interleaved
from .ratios import blocking, concurrent, interleaved, sequential


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        vault = start_emulator(Path(tmp))
        options = emulator_options(vault)
        svc = KeyManagementService(Settings(provider=ProviderType.AZURE_KEY_VAULT,
                                            data_dir=Path(tmp) / "data",
                                            provider_options=options))
        direct_client = KeyClient(vault.url, StaticTokenCredential("bench"), api_version="7.5",
                                  connection_verify=options["AZURE_CA_BUNDLE"],
                                  verify_challenge_resource=False)
        print("== Azure Key Vault (emulator): use_key SIGN through qkms vs the SDK directly ==")
        keys = {}
        for algorithm, jws in (("ECDSA-P256", SignatureAlgorithm.es256),
                               ("RSA-2048", SignatureAlgorithm.ps256)):
            key = keys[algorithm] = await svc.create_key(usage="SIGNING", algorithm=algorithm,
                                                         owner="bench")
            ref = svc.catalog.get(key.name).current.provider_ref
            crypto = direct_client.get_cryptography_client(ref["name"], key_version=ref["version"])

            def direct(crypto=crypto, jws=jws):
                return crypto.sign(jws, hashlib.sha256(MESSAGE).digest())

            def ours(key=key):
                return svc.use_key(key.key_id, "SIGN", MESSAGE)
            await interleaved(f"SIGN {algorithm} native (1 KiB)", sequential(ours),
                              blocking(direct), target=0.8)
            await interleaved("  16 concurrent qkms callers vs the SDK", concurrent(ours),
                              blocking(direct))

        print("== envelope keys (software, data key wrapped by the vault) next to native ==")
        native = keys["ECDSA-P256"]
        await envelope_interleaved(svc, native, ("Ed25519", "ML-DSA-65"))
        direct_client.close()
        svc.provider.client.close()
        vault.close()

"""Which algorithms each provider holds natively, by envelope, or not at all.

The same table decides at key creation and is printed by ``qkms providers`` and
the README, so what users read is what runs.  An algorithm missing from a
provider's NATIVE set is held by envelope (generated in software, wrapped by a
key inside the provider).  A provider whose server may or may not accept an
algorithm (AWS ML-DSA, say) probes it and reports the mode it actually used
in each key's ``provider_mode``.
"""

from __future__ import annotations

from qkms.model.algorithms import ALGORITHMS, AlgorithmInfo
from qkms.model.enums import ProviderType

from .base import Capability

NATIVE: dict[ProviderType, frozenset[str]] = {
    ProviderType.LOCAL_DEV: frozenset(),
    ProviderType.HASHICORP_VAULT: frozenset({
        "Ed25519", "ECDSA-P256", "RSA-2048", "RSA-4096", "AES-256-GCM", "ChaCha20-Poly1305",
        "ML-DSA-44", "ML-DSA-65", "ML-DSA-87"}),
    ProviderType.AWS_KMS: frozenset({
        "ECDSA-secp256k1", "ECDSA-P256", "RSA-2048", "RSA-4096", "AES-256-GCM"}),
    ProviderType.AZURE_KEY_VAULT: frozenset({
        "ECDSA-P256", "ECDSA-secp256k1", "RSA-2048", "RSA-4096"}),
    ProviderType.HSM: frozenset({
        "AES-256-GCM", "ECDSA-P256", "Ed25519", "RSA-2048", "RSA-4096"}),
}
NOTES: dict[ProviderType, str] = {
    ProviderType.LOCAL_DEV: "every key in software, sealed under the KEK",
    ProviderType.HASHICORP_VAULT: "rotation maps to transit versions; envelope wraps with "
                                  "transit encrypt; native RSA signs only (transit OAEP "
                                  "takes no label)",
    ProviderType.AWS_KMS: "ML-DSA and Ed25519 become native where the endpoint accepts "
                          "them (tried once per process); envelope wraps with Encrypt; one "
                          "alias per key; native RSA signs only (KMS OAEP takes no label)",
    ProviderType.AZURE_KEY_VAULT: "AES only on Managed HSM; envelope wraps a data key with "
                                  "wrapKey; rotation adds a vault key version; native RSA "
                                  "signs only (Key Vault OAEP takes no label)",
    ProviderType.HSM: "objects labelled by key ID; envelope wraps with an HSM AES key; "
                      "RSA-OAEP labels via raw RSA where the token lacks them (SoftHSM)",
}


# What a provider learned by trying: AWS KMS tries ML-DSA and Ed25519 natively on first use
# and records here what its endpoint did (providers.aws), so the table and keys agree.
PROBED: dict[tuple[ProviderType, str], Capability] = {}


def capability(provider: ProviderType, algorithm: AlgorithmInfo) -> Capability:
    if provider is ProviderType.LOCAL_DEV:
        return Capability.SOFTWARE
    if (provider, algorithm.name) in PROBED:
        return PROBED[(provider, algorithm.name)]
    return Capability.NATIVE if algorithm.name in NATIVE[provider] else Capability.ENVELOPE


def table() -> list[dict[str, str]]:
    """One row per provider and algorithm, for ``qkms providers`` and the README."""
    return [{"provider": p.value, "algorithm": a.name, "mode": capability(p, a).value}
            for p in ProviderType for a in ALGORITHMS]

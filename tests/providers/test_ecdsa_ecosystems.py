"""Every provider's ECDSA signatures, in the forms other ecosystems consume.

AWS KMS and Azure Key Vault hold secp256k1 natively and, like OpenSSL, return high-S
signatures half the time; the others hold it by envelope.  Whichever signed, libsecp256k1
(strict low-S) verifies and recovers, eth-keys recovers the address, PyJWT verifies
ES256K and ES256 JWSs against the JWKS (tests/ecosystems.py).
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from eth_hash.auto import keccak

from qkms.crypto import ecdsa
from qkms.model.enums import ProviderType
from qkms.providers.base import Capability
from qkms.signing import SignatureMismatchError
from tests.ecosystems import check_jws, check_secp256k1

NATIVE_SECP256K1 = {ProviderType.AWS_KMS, ProviderType.AZURE_KEY_VAULT}


async def assert_moto_digest_gap(svc, key) -> None:
    """GAP: moto ignores MessageType DIGEST and signs SHA-256 of the digest (AWS KMS signs
    the digest as given).  qkms verifies prehashed signatures before returning them, so
    on moto it refuses, and never hands out a signature over the wrong digest."""
    with pytest.raises(SignatureMismatchError, match="AWS_KMS returned does not verify"):
        await svc.use_key(key.key_id, "SIGN", keccak(b"tx"), prehashed=True)
    if key.algorithm == "ECDSA-secp256k1":
        with pytest.raises(SignatureMismatchError):
            await svc.use_key(key.key_id, "SIGN", keccak(b"tx"), prehashed=True,
                              recovery_id=True)


async def test_secp256k1_signatures_for_ethereum_and_jose(provider_service, provider_type):
    key = await provider_service.create_key(usage="SIGNING", algorithm="ECDSA-secp256k1",
                                            owner="eth")
    if provider_type in NATIVE_SECP256K1:
        assert key.provider_mode == Capability.NATIVE.value
    moto = provider_type is ProviderType.AWS_KMS
    await check_secp256k1(provider_service, key, rounds=16, keccak_digests=not moto)
    await check_jws(provider_service, key, "ES256K")
    if moto:
        await assert_moto_digest_gap(provider_service, key)


async def test_p256_raw_prehashed_and_low_s(provider_service, provider_type):
    """P-256 keeps the provider's own S (high half the time) unless ``low_s`` asks; then
    every provider path, AWS KMS native on moto included, returns s <= n/2, which
    cryptography (OpenSSL) verifies.  Prehashed signing is checked where the server honours
    MessageType DIGEST; on moto the gap is asserted instead."""
    key = await provider_service.create_key(usage="SIGNING", algorithm="ECDSA-P256",
                                            owner="jose")
    moto = provider_type is ProviderType.AWS_KMS
    if moto:
        assert key.provider_mode == Capability.NATIVE.value
    await check_jws(provider_service, key, "ES256")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public_key)
    digest = hashlib.sha256(b"payload").digest()
    high = 0
    for _ in range(24):  # all 24 low by chance: 2**-24
        r, s = ecdsa.split((await provider_service.use_key(key.key_id, "SIGN",
                                                           b"payload")).signature)
        high += s > ecdsa.P256.half_n
    assert high, "P-256 signatures were normalized without low_s"
    for _ in range(8):
        signed = await provider_service.use_key(key.key_id, "SIGN", b"payload", low_s=True,
                                                signature_format="raw")
        r, s = ecdsa.from_raw(signed.signature)
        assert s <= ecdsa.P256.half_n
        public.verify(ecdsa.to_der(r, s), b"payload", ec.ECDSA(hashes.SHA256()))
        assert await provider_service.use_key(key.key_id, "VERIFY", b"payload",
                                              signature=signed.signature)
        if moto:
            continue
        signed = await provider_service.use_key(key.key_id, "SIGN", digest, prehashed=True,
                                                low_s=True, signature_format="raw")
        assert int.from_bytes(signed.signature[32:], "big") <= ecdsa.P256.half_n
        assert await provider_service.use_key(key.key_id, "VERIFY", b"payload",
                                              signature=signed.signature)
    if moto:
        await assert_moto_digest_gap(provider_service, key)

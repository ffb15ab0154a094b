"""RSASSA-PKCS1-v1_5 (SHA-256) signatures from every provider's native RSA keys:
OpenBao transit (signature_algorithm pkcs1v15), AWS KMS on moto
(RSASSA_PKCS1_V1_5_SHA_256), the Azure Key Vault emulator (RS256), SoftHSM2
(CKM_SHA256_RSA_PKCS) and LOCAL_DEV (software).  Each is verified with ``cryptography``
and is not a PSS signature; PSS stays the default."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from qkms.model.enums import ProviderType
from qkms.providers.base import Capability


async def test_rsa_signs_pkcs1v15_when_asked(provider_service, provider_type):
    key = await provider_service.create_key(usage="SIGNING", algorithm="RSA-2048", owner="pki")
    if provider_type is not ProviderType.LOCAL_DEV:
        assert key.provider_mode == Capability.NATIVE.value
    public = serialization.load_pem_public_key(key.public_key_pem.encode())
    signed = await provider_service.use_key(key.key_id, "SIGN", b"to be signed",
                                            rsa_padding="pkcs1v15")
    public.verify(signed.signature, b"to be signed", padding.PKCS1v15(), hashes.SHA256())
    assert await provider_service.use_key(key.key_id, "VERIFY", b"to be signed",
                                          signature=signed.signature, rsa_padding="pkcs1v15")
    pss = await provider_service.use_key(key.key_id, "SIGN", b"to be signed")
    public.verify(pss.signature, b"to be signed",
                  padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO), hashes.SHA256())
    assert pss.signature != signed.signature

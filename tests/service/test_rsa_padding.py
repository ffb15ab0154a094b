"""RSA SIGN and VERIFY with ``rsa_padding`` on LOCAL_DEV: PSS stays the default,
``pkcs1v15`` gives RSASSA-PKCS1-v1_5 over SHA-256 (what ``cryptography`` and OpenSSL
verify as sha256WithRSAEncryption), and the option is refused where it cannot apply."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from qkms.errors import InvalidInputError


def public_key(meta):
    return serialization.load_pem_public_key(meta.public_key_pem.encode())


@pytest.mark.parametrize("algorithm", ["RSA-2048", "RSA-4096"])
async def test_pkcs1v15_signatures_verify_independently(svc, algorithm) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm=algorithm, owner="pki")
    public = public_key(key)
    signed = await svc.use_key(key.key_id, "SIGN", b"tbs", rsa_padding="pkcs1v15")
    public.verify(signed.signature, b"tbs", padding.PKCS1v15(), hashes.SHA256())
    # PKCS#1 v1.5 is deterministic: the same message gives the same signature.
    again = await svc.use_key(key.key_id, "SIGN", b"tbs", rsa_padding="PKCS1v15")
    assert again.signature == signed.signature
    with pytest.raises(InvalidSignature):
        public.verify(signed.signature, b"tbs", padding.PSS(padding.MGF1(hashes.SHA256()),
                                                              32), hashes.SHA256())
    assert await svc.use_key(key.key_id, "VERIFY", b"tbs", signature=signed.signature,
                             rsa_padding="pkcs1v15")
    assert not await svc.use_key(key.key_id, "VERIFY", b"other", signature=signed.signature,
                                 rsa_padding="pkcs1v15")
    # The default and "pss" stay RSASSA-PSS.
    for options in ({}, {"rsa_padding": "pss"}):
        pss = await svc.use_key(key.key_id, "SIGN", b"tbs", **options)
        public.verify(pss.signature, b"tbs", padding.PSS(padding.MGF1(hashes.SHA256()),
                                                         padding.PSS.AUTO), hashes.SHA256())
        assert not await svc.use_key(key.key_id, "VERIFY", b"tbs", signature=pss.signature,
                                     rsa_padding="pkcs1v15")


@pytest.mark.parametrize("algorithm,usage,operation,value,reason", [
    ("ECDSA-P256", "SIGNING", "SIGN", "pkcs1v15", "applies to RSA only, not ECDSA-P256"),
    ("Ed25519", "SIGNING", "VERIFY", "pkcs1v15", "applies to RSA only, not Ed25519"),
    ("RSA-2048", "SIGNING", "SIGN", "pkcs1", "'pkcs1' is not one of pss, pkcs1v15"),
    ("RSA-2048", "SIGNING", "SIGN", 15, "15 is not one of pss, pkcs1v15"),
    ("RSA-2048", "ENCRYPTION", "ENCRYPT", "pkcs1v15", "applies to SIGN and VERIFY"),
])
async def test_rsa_padding_refused_where_it_cannot_apply(svc, algorithm, usage, operation,
                                                         value, reason) -> None:
    key = await svc.create_key(usage=usage, algorithm=algorithm, owner="r")
    extra = {"signature": b"s"} if operation == "VERIFY" else {}
    with pytest.raises(InvalidInputError) as caught:
        await svc.use_key(key.key_id, operation, b"hello", rsa_padding=value, **extra)
    assert caught.value.field == "rsa_padding" and reason in caught.value.reason
    entry = svc.audit.recent(1)[0]
    assert entry.result == "denied" and entry.operation == operation

"""SIGN and VERIFY options for ECDSA on LOCAL_DEV: low-S, raw r||s, prehashed digests and
recovery ids, checked by libsecp256k1, eth-keys and PyJWT (tests/ecosystems.py); and every
option the key's algorithm cannot honour refused, naming the option."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from qkms.crypto import ecdsa
from qkms.errors import InvalidInputError
from tests.ecosystems import check_jws, check_secp256k1


async def test_secp256k1_for_bitcoin_and_ethereum_software(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-secp256k1", owner="eth")
    await check_secp256k1(svc, key, rounds=32)


@pytest.mark.parametrize("algorithm,alg", [("ECDSA-P256", "ES256"), ("ECDSA-secp256k1", "ES256K")])
async def test_jws_with_raw_signatures_verify_in_pyjwt(svc, algorithm, alg) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm=algorithm, owner="jose")
    await check_jws(svc, key, alg)


async def test_p256_keeps_the_standard_behaviour_unless_asked(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="p")
    high = 0
    for i in range(48):
        sig = (await svc.use_key(key.key_id, "SIGN", b"m%d" % i)).signature
        high += ecdsa.split(sig)[1] > ecdsa.P256.half_n
        low = (await svc.use_key(key.key_id, "SIGN", b"m", low_s=True)).signature
        assert ecdsa.split(low)[1] <= ecdsa.P256.half_n
        raw = (await svc.use_key(key.key_id, "SIGN", b"m", signature_format="RAW")).signature
        assert len(raw) == 64 and await svc.use_key(key.name, "VERIFY", b"m", signature=raw)
    assert 0 < high < 48  # OpenSSL's standard behaviour; fails with probability 2^-47


async def test_default_stays_der_and_verify_can_insist_on_a_form(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-secp256k1", owner="d")
    der = (await svc.use_key(key.key_id, "SIGN", b"m")).signature
    assert ecdsa.split(der)  # parses as DER
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), key.public_key)
    public.verify(der, b"m", ec.ECDSA(hashes.SHA256()))
    raw = ecdsa.to_raw(*ecdsa.split(der))
    assert await svc.use_key(key.key_id, "VERIFY", b"m", signature=raw, signature_format="raw")
    assert not await svc.use_key(key.key_id, "VERIFY", b"m", signature=raw,
                                 signature_format="der")
    # A high-S signature (another signer's) still verifies, as in OpenSSL.
    r, s = ecdsa.split(der)
    assert await svc.use_key(key.key_id, "VERIFY", b"m",
                             signature=ecdsa.to_der(r, ecdsa.SECP256K1.n - s))
    # recovery_id alone gives raw; with der asked for, DER and the id.
    assert len((await svc.use_key(key.key_id, "SIGN", b"m", recovery_id=True)).signature) == 64
    both = await svc.use_key(key.key_id, "SIGN", b"m", recovery_id=True, signature_format="der")
    assert ecdsa.split(both.signature) and both.recovery_id in (0, 1)


async def test_prehashed_signs_the_digest_as_given(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="d")
    digest = hashlib.sha256(b"message").digest()
    signature = (await svc.use_key(key.key_id, "SIGN", digest, prehashed=True)).signature
    assert await svc.use_key(key.key_id, "VERIFY", b"message", signature=signature)
    assert await svc.use_key(key.key_id, "VERIFY", digest, signature=signature, prehashed=True)
    assert not await svc.use_key(key.key_id, "VERIFY", digest, signature=signature)


REFUSED = [
    ("Ed25519", "SIGN", {"prehashed": True}, "prehashed", "signs the message itself"),
    ("RSA-2048", "SIGN", {"prehashed": True}, "prehashed", "signs the message itself"),
    ("ML-DSA-65", "VERIFY", {"prehashed": True}, "prehashed", "signs the message itself"),
    ("Ed25519", "SIGN", {"signature_format": "raw"}, "signature_format", "one form"),
    ("RSA-2048", "SIGN", {"signature_format": "der"}, "signature_format", "one form"),
    ("ECDSA-P256", "SIGN", {"recovery_id": True}, "recovery_id", "only ECDSA-secp256k1"),
    ("Ed25519", "SIGN", {"recovery_id": True}, "recovery_id", "only ECDSA-secp256k1"),
    ("ECDSA-secp256k1", "SIGN", {"low_s": False}, "low_s", "always low-S"),
    ("Ed25519", "SIGN", {"low_s": True}, "low_s", "ECDSA only"),
    ("ECDSA-secp256k1", "VERIFY", {"recovery_id": True}, "recovery_id", "SIGN only"),
    ("ECDSA-secp256k1", "SIGN", {"signature_format": "jws"}, "signature_format", "not one of"),
    ("ECDSA-secp256k1", "SIGN", {"prehashed": "yes"}, "prehashed", "true or false"),
    ("ECDSA-secp256k1", "SIGN", {"prehashed": True}, "data", "32-byte digest, got 5"),
    ("AES-256-GCM", "ENCRYPT", {"signature_format": "raw"}, "signature_format",
     "SIGN and VERIFY"),
]


@pytest.mark.parametrize("algorithm,operation,options,field,reason", REFUSED)
async def test_options_the_algorithm_cannot_honour_are_refused(svc, algorithm, operation,
                                                               options, field, reason) -> None:
    usage = "ENCRYPTION" if algorithm == "AES-256-GCM" else "SIGNING"
    key = await svc.create_key(usage=usage, algorithm=algorithm, owner="r")
    extra = {"signature": b"s"} if operation == "VERIFY" else {}
    with pytest.raises(InvalidInputError) as caught:
        await svc.use_key(key.key_id, operation, b"hello", **options, **extra)
    assert caught.value.field == field and reason in caught.value.reason
    entry = svc.audit.recent(1)[0]
    assert entry.result == "denied" and entry.operation == operation

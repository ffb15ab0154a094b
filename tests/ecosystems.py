"""Checks, by libraries that share no code with qkms, that a service's ECDSA signatures are
what Bitcoin/Ethereum software and JOSE verifiers expect; shared by the LOCAL_DEV tests and
the provider suite (each provider signs its own way, so each is checked the same way).
"""

from __future__ import annotations

import base64
import hashlib
import json

import coincurve
import jwt
from eth_hash.auto import keccak
from eth_keys import keys as eth_keys

from qkms.crypto import ecdsa, ethereum


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def check_secp256k1(svc, key, rounds: int = 24, *, keccak_digests: bool = True) -> None:
    """libsecp256k1 (strict: refuses high-S) verifies every signature, DER and raw, and
    recovers the key from (r, s, recovery_id); eth-keys recovers the key's address from
    the signed digest: SHA-256 of the message, and (``keccak_digests``) a Keccak-256
    digest signed as given."""
    strict = coincurve.PublicKey(key.public_key)
    address = ethereum.address(key.public_key)
    for i in range(rounds):
        message = b"ethereum %d" % i
        der = (await svc.use_key(key.key_id, "SIGN", message)).signature
        assert strict.verify(der, message), f"libsecp256k1 refused signature {i}"
        raw = (await svc.use_key(key.key_id, "SIGN", message, signature_format="raw")).signature
        assert len(raw) == 64 and int.from_bytes(raw[32:], "big") <= ecdsa.SECP256K1.half_n
        assert strict.verify(ecdsa.to_der(*ecdsa.from_raw(raw)), message)
        assert await svc.use_key(key.key_id, "VERIFY", message, signature=raw)
        assert await svc.use_key(key.key_id, "VERIFY", message, signature=der)

        signed = await svc.use_key(key.key_id, "SIGN", message, recovery_id=True)
        assert signed.recovery_id in (0, 1) and len(signed.signature) == 64
        recovered = coincurve.PublicKey.from_signature_and_message(
            signed.signature + bytes([signed.recovery_id]), message)  # SHA-256 by default
        assert recovered.format(compressed=False) == key.public_key
        vrs = eth_keys.Signature(signed.signature + bytes([signed.recovery_id]))
        sha256 = hashlib.sha256(message).digest()
        assert vrs.recover_public_key_from_msg_hash(sha256).to_checksum_address() == address

        if not keccak_digests:
            continue
        digest = keccak(b"transaction %d" % i)
        signed = await svc.use_key(key.key_id, "SIGN", digest, prehashed=True, recovery_id=True)
        vrs = eth_keys.Signature(signed.signature + bytes([signed.recovery_id]))
        assert vrs.recover_public_key_from_msg_hash(digest).to_checksum_address() == address
        assert strict.verify(ecdsa.to_der(*ecdsa.from_raw(signed.signature)), digest,
                             hasher=None)
        assert await svc.use_key(key.key_id, "VERIFY", digest, signature=signed.signature,
                                 prehashed=True)


async def jws(svc, key, alg: str, claims: dict) -> str:
    """A compact JWS whose signature qkms made in raw r||s form (RFC 7515, RFC 7518 3.4)."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": key.key_id}).encode())
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    signed = await svc.use_key(key.key_id, "SIGN", signing_input.encode(),
                               signature_format="raw")
    return f"{signing_input}.{b64url(signed.signature)}"


async def check_jws(svc, key, alg: str) -> None:
    """PyJWT verifies the JWS against the key's JWKS, as a relying party would."""
    jwks = jwt.PyJWKSet.from_dict(svc.jwks(key.name))
    (public,) = [k for k in jwks.keys if k.key_id == key.key_id]
    for i in range(8):
        token = await jws(svc, key, alg, {"sub": "qkms", "n": i})
        assert jwt.decode(token, key=public.key, algorithms=[alg]) == {"sub": "qkms", "n": i}
    der = (await svc.use_key(key.key_id, "SIGN", b"x")).signature
    forged = token.rsplit(".", 1)[0] + "." + b64url(der)  # DER is not a JWS signature
    try:
        jwt.decode(forged, key=public.key, algorithms=[alg])
    except jwt.InvalidSignatureError:
        return
    raise AssertionError("PyJWT accepted a DER signature in a JWS")

"""``sign_bridge``: a version in its grace period signs one thing, a CA bridge certifying
the key's active version; anything else, or any other version, is refused and audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from qkms.errors import InvalidInputError, KeyStateError
from qkms.issuer import x509 as ix


def tbs_for(pem: str) -> bytes:
    spki = serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ix.ca_tbs(subject=ix.ca_subject("bridge"), spki_der=spki,
                     signature_alg=ix.signature_algorithm("ECDSA-P256"), serial=7,
                     now=datetime.now(UTC), duration=timedelta(days=1))


async def test_only_a_grace_version_signs_only_a_bridge_to_the_active_one(svc) -> None:
    key = await svc.create_key(name="pki/ca", usage="SIGNING", algorithm="ECDSA-P256",
                               owner="pki")
    with pytest.raises(KeyStateError, match="grace period"):
        await svc.sign_bridge(key.key_id, tbs_for(key.public_key_pem))
    rotated = await svc.rotate_key("pki/ca")
    new = await svc.get_key(rotated.new_key_id)
    signed = await svc.sign_bridge(key.key_id, tbs_for(new.public_key_pem))
    assert signed.key_id == key.key_id
    assert await svc.use_key(key.key_id, "VERIFY", tbs_for(new.public_key_pem),
                             signature=signed.signature) is not None
    entry = svc.audit.recent(2)[0]
    assert entry.operation == "SIGN" and entry.details["purpose"] == "ca_bridge"
    with pytest.raises(InvalidInputError, match="must certify the active version"):
        await svc.sign_bridge(key.key_id, tbs_for(key.public_key_pem))
    with pytest.raises(InvalidInputError, match="not a DER TBSCertificate"):
        await svc.sign_bridge(key.key_id, b"anything else")
    with pytest.raises(KeyStateError):
        await svc.sign_bridge(rotated.new_key_id, tbs_for(new.public_key_pem))
    assert svc.audit.recent(1)[0].result in ("denied", "error")

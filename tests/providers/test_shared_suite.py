"""One suite, every provider: each algorithm it can hold, natively or by envelope."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from qkms.crypto import ecdsa, suite_for
from qkms.errors import KeyRevokedError, KeyStateError, QkmsError
from qkms.model.algorithms import ALGORITHMS
from qkms.model.enums import Family, Usage, VersionState
from qkms.providers.base import Capability
from qkms.providers.capabilities import capability

USAGE = {Family.SIGNATURE: Usage.SIGNING, Family.RSA: Usage.SIGNING, Family.AEAD: Usage.ENCRYPTION,
         Family.KEM: Usage.ENCRYPTION, Family.KDF: Usage.KEY_DERIVATION}
NAMES = [a.name for a in ALGORITHMS]


def info(name):
    return next(a for a in ALGORITHMS if a.name == name)


async def exercise(svc, key, name) -> None:
    """The operations of the key's usage, checked against an independent verifier."""
    algo = info(name)
    family = algo.family
    if family in (Family.SIGNATURE, Family.RSA):
        result = await svc.use_key(key.key_id, "SIGN", b"provider suite")
        assert await svc.use_key(key.key_id, "VERIFY", b"provider suite",
                                 signature=result.signature)
        assert not await svc.use_key(key.key_id, "VERIFY", b"other", signature=result.signature)
        # Offline, against the public key the provider returned.
        assert suite_for(name).load_public(key.public_key).verify(b"provider suite",
                                                                  result.signature)
        # A batch's plain SIGNs (one provider call, one group commit): each verifies
        # offline, low-S on secp256k1 as single SIGN gives it, and one entry per message.
        messages = [b"batch %d" % i for i in range(3)]
        before = len(svc.audit.recent(1000))
        batch = await svc.sign_many(key.key_id, messages)
        assert [r.key_id for r in batch] == [key.key_id] * 3
        for message, signed in zip(messages, batch, strict=True):
            assert suite_for(name).load_public(key.public_key).verify(message, signed.signature)
            if name == "ECDSA-secp256k1":
                assert ecdsa.split(signed.signature)[1] <= ecdsa.SECP256K1.half_n
        entries = svc.audit.recent(1000)[before:]
        assert [(e.operation, e.result, e.key_id) for e in entries] == \
            [("SIGN", "success", key.key_id)] * 3
        assert len({e.digests["data"] for e in entries}) == 3
        if key.public_key_pem and name.startswith(("Ed25519", "ECDSA", "RSA")) and "+" not in name:
            public = load_pem_public_key(key.public_key_pem.encode())
            assert public.public_bytes  # parses with cryptography
    elif family in (Family.AEAD, Family.KEM):
        token = await svc.use_key(key.key_id, "ENCRYPT", b"secret", context="ctx")
        assert (await svc.use_key(key.key_id, "DECRYPT", token, context="ctx")).plaintext \
            == b"secret"
        if family is Family.KEM:
            encap = await svc.use_key(key.key_id, "ENCAPSULATE")
            decap = await svc.use_key(key.key_id, "DECAPSULATE", encap.ciphertext)
            assert decap.shared_secret == encap.shared_secret
    else:
        derived = await svc.use_key(key.key_id, "DERIVE", context="app", length=48)
        assert len(derived.derived_key) == 48


@pytest.mark.parametrize("name", NAMES)
async def test_every_algorithm_the_provider_can_hold(provider_service, provider_type, name):
    mode = capability(provider_type, info(name))
    if mode is Capability.UNSUPPORTED:
        pytest.fail(f"{name} is unsupported on {provider_type.value}: the table must say why")
    key = await provider_service.create_key(usage=USAGE[info(name).family], algorithm=name,
                                            owner="suite")
    # The capability table is checked against what actually ran.
    assert key.provider_mode == mode.value
    await exercise(provider_service, key, name)


@pytest.mark.parametrize("name", ["Ed25519", "ECDSA-P256", "AES-256-GCM", "ML-DSA-65",
                                  "ML-KEM-768"])
async def test_rotation_grace_and_refusal_after_it(provider_service, clock, name):
    usage = USAGE[info(name).family]
    key = await provider_service.create_key(usage=usage, algorithm=name, owner="suite")
    if usage is Usage.SIGNING:
        old = await provider_service.use_key(key.key_id, "SIGN", b"m")
    else:
        old = await provider_service.use_key(key.key_id, "ENCRYPT", b"m")
    rotation = await provider_service.rotate_key(key.key_id, grace_period="P1D")
    await exercise(provider_service, await provider_service.get_key(rotation.new_key_id), name)
    if usage is Usage.SIGNING:
        assert await provider_service.use_key(key.name, "VERIFY", b"m", signature=old.signature)
    else:
        assert (await provider_service.use_key(key.name, "DECRYPT", old)).plaintext == b"m"
    clock.advance(days=1, seconds=1)
    with pytest.raises(KeyStateError, match="grace period"):
        if usage is Usage.SIGNING:
            await provider_service.use_key(key.key_id, "VERIFY", b"m", signature=old.signature)
        else:
            await provider_service.use_key(key.name, "DECRYPT", old)


async def test_revoke(provider_service):
    key = await provider_service.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="s")
    await provider_service.revoke_key(key.name, "suite")
    with pytest.raises(KeyRevokedError):
        await provider_service.use_key(key.name, "SIGN", b"m")


async def test_schedule_deletion_cancel_and_destroy(provider_service, clock):
    key = await provider_service.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM",
                                            owner="s")
    token = await provider_service.use_key(key.key_id, "ENCRYPT", b"keep")
    await provider_service.schedule_key_deletion(key.name, "P7D")
    await provider_service.cancel_key_deletion(key.name)
    assert (await provider_service.use_key(key.name, "DECRYPT", token)).plaintext == b"keep"
    await provider_service.schedule_key_deletion(key.name, "P7D")
    clock.advance(days=7, seconds=1)
    await provider_service.tick()
    assert (await provider_service.get_key(key.key_id)).state is VersionState.DESTROYED


async def test_rsa_public_key_is_der_spki(provider_service):
    key = await provider_service.create_key(usage="SIGNING", algorithm="RSA-2048", owner="s")
    assert load_der_public_key(key.public_key).key_size == 2048


class Killed(BaseException):
    """The process dies between the provider's write and the catalog's (kill -9)."""


@pytest.mark.parametrize("operation", ["create", "rotate"])
async def test_a_write_cut_short_is_swept_from_the_provider(make_provider_service, provider_type,
                                                            operation, monkeypatch):
    """The intent written before the provider call names what a killed process left; the
    next process's sweep destroys it (by the name, tag or label each provider gives the
    key ID) and audits it, and the key itself is untouched."""
    first = make_provider_service()
    key = await first.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="s",
                                 name="cut" if operation == "rotate" else "before")
    if operation == "create":
        key = None

    def killed(*_args, **_kwargs):
        raise Killed
    monkeypatch.setattr(first.catalog, "put", killed)
    with pytest.raises(Killed):
        if key is None:
            await first.create_key(usage="SIGNING", algorithm="ECDSA-P256", owner="s",
                                   name="cut")
        else:
            await first.rotate_key(key.name)
    [intent] = first.intents.pending()
    previous = None if intent.previous is None else first._handle(
        first.catalog.get("cut").versions[0])
    left = await first.provider.leftovers(intent.key_id, info("ECDSA-P256"), previous)
    assert left, "the provider made nothing: the kill came too early to test anything"

    # The next process, after the kill (no clean stop: its last entry is unsigned).
    after = make_provider_service(intent_timeout=0)
    assert await after.resolve_intents() == {intent.key_id: "orphaned"}
    assert after.intents.pending() == []
    for handle in left:
        if provider_type.value == "HASHICORP_VAULT" and operation == "rotate":
            continue  # transit cannot drop one version: it is spent, fenced with the others
        if provider_type.value == "AWS_KMS":  # GAP: moto still signs with it; AWS refuses
            state = after.provider.client.describe_key(KeyId=handle.ref["kms_key"])
            assert state["KeyMetadata"]["KeyState"] == "PendingDeletion"
            continue
        with pytest.raises(QkmsError):
            await after.provider.sign(handle, b"m")
    sweeps = [e for e in after.audit.recent() if e.operation == "SWEEP"]
    assert [(e.key_name, e.details["key_id"]) for e in sweeps] == [("cut", intent.key_id)]
    if key is not None:  # the key itself still signs with the version it had
        signed = await after.use_key("cut", "SIGN", b"still")
        assert signed.key_id == key.key_id

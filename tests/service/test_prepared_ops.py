"""use_key's prepared operations (``KeyOperations._prepared``): what is derived once per
catalog record never outlives that record, and the checks still decide every call."""

from __future__ import annotations

import pytest

from qkms.audit.entry import Actor
from qkms.errors import KeyRevokedError, KeyStateError
from qkms.model.enums import Operation
from qkms.signing import NO_OPTIONS, SignOptions


def _cached(svc, name: str):
    return {key: record for key, (record, _) in svc._prepared_ops.items() if key[0] == name}


async def test_a_revocation_between_two_calls_refuses_the_second(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    assert (await svc.use_key(key.name, "SIGN", b"m")).key_id == key.key_id
    await svc.revoke_key(key.name, "compromised")
    with pytest.raises(KeyRevokedError):
        await svc.use_key(key.name, "SIGN", b"m")
    with pytest.raises(KeyRevokedError):  # by key ID too
        await svc.use_key(key.key_id, "SIGN", b"m")
    last = svc.audit.recent(1)[0]
    assert (last.operation, last.result, last.key_name) == ("SIGN", "denied", key.name)
    assert "revoked" in (last.reason or "")


async def test_a_rotation_between_two_calls_signs_with_the_new_version(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    assert (await svc.use_key(key.name, "SIGN", b"m")).key_id == key.key_id
    assert (await svc.use_key(key.key_id, "SIGN", b"m")).key_id == key.key_id
    rotation = await svc.rotate_key(key.name, reason="MANUAL")
    assert (await svc.use_key(key.name, "SIGN", b"m")).key_id == rotation.new_key_id
    with pytest.raises(KeyStateError):  # the old version, in its grace period, signs no more
        await svc.use_key(key.key_id, "SIGN", b"m")
    with pytest.raises(KeyStateError):  # and is never kept: asked again, refused again
        await svc.use_key(key.key_id, "SIGN", b"m")


async def test_a_cached_answer_never_survives_a_record_change(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    await svc.use_key(key.name, "SIGN", b"m")
    before = svc.get_record(key.name)
    assert [r is before for r in _cached(svc, key.name).values()] == [True]
    await svc.rotate_key(key.name, reason="MANUAL")
    after = svc.get_record(key.name)
    assert after is not before
    result = await svc.use_key(key.name, "SIGN", b"m")
    assert result.key_id == after.current.key_id
    assert [r is after for r in _cached(svc, key.name).values()] == [True]


async def test_another_replicas_revocation_is_honoured_at_once(make_service) -> None:
    a, b = make_service(catalog_ttl=0.0), make_service(catalog_ttl=0.0)
    key = await a.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    for _ in range(2):  # the second call is answered from B's prepared operation
        assert (await b.use_key(key.name, "SIGN", b"m")).key_id == key.key_id
    await a.revoke_key(key.name, "compromised")
    with pytest.raises(KeyRevokedError):
        await b.use_key(key.name, "SIGN", b"m")


async def test_the_usage_check_is_not_skipped_by_a_cached_sign(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    await svc.use_key(key.name, "SIGN", b"m")
    with pytest.raises(Exception) as refused:
        await svc.use_key(key.name, "ENCRYPT", b"m")
    assert refused.value.code == "operation_not_allowed"  # type: ignore[attr-defined]


async def test_each_call_is_audited_as_before(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    for actor in (None, "alice"):
        for _ in range(2):
            await svc.use_key(key.name, "SIGN", b"data", actor=actor)
    entries = [e for e in svc.audit.recent(4)]
    assert [e.actor for e in entries] == [Actor()] * 2 + [Actor("USER", "alice")] * 2
    assert {(e.operation, e.result, e.key_name, e.key_id, e.version, e.reason)
            for e in entries} == {("SIGN", "success", key.name, key.key_id, 1, None)}
    assert all(e.details == {"algorithm": "Ed25519"} for e in entries)
    assert all(e.digests == {"data": svc.audit_mac.digest(b"data")} for e in entries)
    assert len({id(e.details) for e in entries}) == 4  # each entry its own dicts
    assert [e.sequence for e in entries] == list(range(entries[0].sequence,
                                                       entries[0].sequence + 4))


async def test_operations_in_other_spellings_still_parse(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    for spelling in ("SIGN", " sign ", Operation.SIGN):
        assert (await svc.use_key(key.name, spelling, b"m")).operation == "SIGN"
    with pytest.raises(Exception) as refused:
        await svc.use_key(key.name, "SING", b"m")
    assert refused.value.code == "invalid_input"  # type: ignore[attr-defined]
    assert svc.audit.recent(1)[0].operation == "SING"


def test_default_signature_options_are_the_shared_none() -> None:
    assert SignOptions.parse() is NO_OPTIONS and not NO_OPTIONS.given
    assert SignOptions.parse(low_s=True).given
    assert not SignOptions(None, False, False, None, None).given  # equal, not the same


async def test_a_grace_period_is_checked_against_the_clock_on_every_call(svc, clock) -> None:
    """A version in its grace period still decapsulates, until the period ends: what it
    allows depends on the time, so it is decided afresh on each call, never kept."""
    kem = await svc.create_key(usage="ENCRYPTION", algorithm="ML-KEM-768", owner="o")
    encap = await svc.use_key(kem.key_id, "ENCAPSULATE")
    rotation = await svc.rotate_key(kem.name, reason="MANUAL")
    assert rotation.grace_until is not None
    for _ in range(2):
        secret = (await svc.use_key(kem.key_id, "DECAPSULATE", encap.ciphertext)).shared_secret
        assert secret == encap.shared_secret
    clock.now = rotation.grace_until
    with pytest.raises(KeyStateError):
        await svc.use_key(kem.key_id, "DECAPSULATE", encap.ciphertext)

"""The pure lifecycle: transitions, refusals, and invariants under any sequence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkms import lifecycle
from qkms.errors import InvalidDurationError, InvalidInputError, KeyRevokedError, KeyStateError
from qkms.model.enums import Environment, Operation, RotationReason, Usage, VersionState
from qkms.model.keys import KeyRecord, KeyVersion

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def version(n: int, now: datetime = T0) -> KeyVersion:
    return KeyVersion(key_id=f"key_dev_{n:016x}", version=n, algorithm="Ed25519",
                      created_at=now, changed_at=now)


def record(schedule: str = "P30D", grace: str = "P7D") -> KeyRecord:
    return KeyRecord(name="k", environment=Environment.DEV, usage=Usage.SIGNING, owner="o",
                     rotation_schedule=schedule, grace_period=grace, created_at=T0,
                     last_rotated_at=T0, versions=[version(1)])


def test_scheduled_rotation_puts_old_version_in_grace() -> None:
    r = lifecycle.rotate(record(), version(2), reason=RotationReason.SCHEDULED, now=T0)
    old, new = r.versions
    assert (old.state, new.state) == (VersionState.GRACE, VersionState.ACTIVE)
    assert old.grace_until == T0 + timedelta(days=7)
    lifecycle.check_use(old, Operation.VERIFY, T0 + timedelta(days=6))
    with pytest.raises(KeyStateError, match="grace period and only allows"):
        lifecycle.check_use(old, Operation.SIGN, T0)
    with pytest.raises(KeyStateError, match="grace period of .* ended"):
        lifecycle.check_use(old, Operation.VERIFY, T0 + timedelta(days=7))


def test_emergency_rotation_revokes_old_version_at_once() -> None:
    r = lifecycle.rotate(record(), version(2), reason=RotationReason.COMPROMISE, now=T0)
    assert r.versions[0].state is VersionState.REVOKED
    with pytest.raises(KeyRevokedError, match="revoked"):
        lifecycle.check_use(r.versions[0], Operation.VERIFY, T0)


def test_immediate_rotation_retires_without_grace() -> None:
    r = lifecycle.rotate(record(), version(2), reason=RotationReason.MANUAL, now=T0,
                         immediate=True)
    with pytest.raises(KeyStateError, match="retired"):
        lifecycle.check_use(r.versions[0], Operation.VERIFY, T0)


def test_rotation_due_follows_the_schedule() -> None:
    r = record(schedule="PT5S", grace="PT1S")
    assert not lifecycle.rotation_due(r, T0 + timedelta(seconds=4))
    assert lifecycle.rotation_due(r, T0 + timedelta(seconds=5))
    assert lifecycle.next_rotation(r) == T0 + timedelta(seconds=5)


def test_calendar_durations_are_calendar_aware() -> None:
    r = record(schedule="P1M").model_copy(
        update={"last_rotated_at": datetime(2026, 1, 31, tzinfo=UTC)})
    assert lifecycle.next_rotation(r) == datetime(2026, 2, 28, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["P3X", "30D", "P", "PT", "-P1D", "P0D", ""])
def test_malformed_durations_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidDurationError, match="rotation_schedule"):
        lifecycle.validate_schedule(bad, "P1D")


def test_grace_must_be_shorter_than_schedule() -> None:
    with pytest.raises(InvalidInputError, match="grace_period: P30D must be shorter"):
        lifecycle.validate_schedule("P30D", "P30D")


@pytest.mark.parametrize("window,ok", [("P6D", False), ("P7D", True), ("P30D", True),
                                       ("P31D", False)])
def test_deletion_window_is_7_to_30_days(window: str, ok: bool) -> None:
    if ok:
        lifecycle.validate_deletion_window(window)
    else:
        with pytest.raises(InvalidInputError, match="deletion_window"):
            lifecycle.validate_deletion_window(window)


def test_deletion_can_be_cancelled_and_then_completes() -> None:
    r = lifecycle.rotate(record(), version(2), reason=RotationReason.SCHEDULED, now=T0)
    pending = lifecycle.schedule_deletion(r, "P7D", T0)
    assert {v.state for v in pending.versions} == {VersionState.PENDING_DELETION}
    restored = lifecycle.cancel_deletion(pending, T0 + timedelta(days=1))
    assert [v.state for v in restored.versions] == [VersionState.GRACE, VersionState.ACTIVE]
    pending = lifecycle.schedule_deletion(restored, "P7D", T0 + timedelta(days=1))
    assert lifecycle.destroyable(pending, T0 + timedelta(days=7)) == []
    gone = lifecycle.destroy(pending, T0 + timedelta(days=8))
    assert {v.state for v in gone.versions} == {VersionState.DESTROYED}


def test_revoking_an_old_version_keeps_the_key() -> None:
    r = lifecycle.rotate(record(), version(2), reason=RotationReason.SCHEDULED, now=T0)
    r = lifecycle.revoke(r, "leaked backup", T0, r.versions[0].key_id)
    assert [v.state for v in r.versions] == [VersionState.REVOKED, VersionState.ACTIVE]
    r = lifecycle.revoke(r, "decommissioned", T0)
    assert lifecycle.key_state(r) is VersionState.REVOKED


# -- property tests ----------------------------------------------------------------

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["rotate", "compromise", "immediate", "revoke", "revoke_old",
                         "delete", "cancel", "destroy", "expire"]),
        st.integers(min_value=0, max_value=40 * 86400),
    ),
    max_size=25,
)


def apply(r: KeyRecord, action: str, now: datetime) -> KeyRecord:
    if action in ("rotate", "compromise", "immediate"):
        if lifecycle.active_version(r) is None:
            return r
        reason = RotationReason.COMPROMISE if action == "compromise" else RotationReason.MANUAL
        return lifecycle.rotate(r, version(r.current.version + 1, now), reason=reason, now=now,
                                immediate=action == "immediate")
    if action == "revoke":
        return lifecycle.revoke(r, "test", now)
    if action == "revoke_old":
        return lifecycle.revoke(r, "test", now, r.versions[0].key_id)
    if action == "delete":
        return lifecycle.schedule_deletion(r, "P7D", now)
    if action == "cancel":
        return lifecycle.cancel_deletion(r, now)
    if action == "destroy":
        return lifecycle.destroy(r, now)
    return lifecycle.expire_grace(r, now)


@settings(max_examples=300, deadline=None)
@given(ACTIONS)
def test_invariants_hold_for_any_sequence(actions: list[tuple[str, int]]) -> None:
    r, now = record(), T0
    final: dict[str, VersionState] = {}
    for action, step in actions:
        now = now + timedelta(seconds=step)
        r = apply(r, action, now)
        states = [v.state for v in r.versions]
        active = states.count(VersionState.ACTIVE)
        # Exactly one ACTIVE unless the key is revoked or deleted.
        if active != 1:
            assert active == 0
            assert lifecycle.key_state(r) in (VersionState.REVOKED, VersionState.RETIRED,
                                              VersionState.PENDING_DELETION,
                                              VersionState.DESTROYED)
            assert any(s in (VersionState.REVOKED, VersionState.PENDING_DELETION,
                             VersionState.DESTROYED) for s in states)
        # Nothing comes back from REVOKED or DESTROYED.
        for v in r.versions:
            if v.key_id in final and final[v.key_id] is VersionState.DESTROYED:
                assert v.state is VersionState.DESTROYED
            if v.key_id in final and final[v.key_id] is VersionState.REVOKED:
                assert v.state in (VersionState.REVOKED, VersionState.PENDING_DELETION,
                                   VersionState.DESTROYED)
                if v.state is VersionState.PENDING_DELETION:
                    assert v.state_before_deletion is VersionState.REVOKED
            if v.state in (VersionState.REVOKED, VersionState.DESTROYED):
                final[v.key_id] = v.state
        # A grace period never outlives its end.
        for v in r.versions:
            if lifecycle.refusal(v, Operation.VERIFY, now) is None:
                assert v.state is VersionState.ACTIVE or (
                    v.grace_until is not None and now < v.grace_until)
        after = lifecycle.expire_grace(r, now)
        assert not any(v.state is VersionState.GRACE and v.grace_until <= now
                       for v in after.versions)

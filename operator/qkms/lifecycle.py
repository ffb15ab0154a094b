"""Key lifecycle: versions, rotation, grace, revocation and deletion.

Pure functions over ``KeyRecord``: no I/O and no clock (``now`` is passed in),
so every decision is tested directly and by property tests.  Each transition
returns a new record; the caller persists it.

States and what they allow:

- ACTIVE: every operation of the key's usage.  Exactly one version is ACTIVE
  unless the key is revoked, pending deletion or destroyed.
- GRACE (until ``grace_until``): VERIFY, DECRYPT and DECAPSULATE only, so old
  signatures and ciphertexts keep working while clients move to the new version.
- RETIRED, REVOKED, PENDING_DELETION, DESTROYED: nothing.  Nothing comes back
  from REVOKED or DESTROYED; cancelling a deletion restores the state before it.

Revocation: revoking the key (by name or by its active version) revokes every
live version, because a compromised key must not keep verifying.  Revoking a
GRACE or RETIRED version revokes that version alone.  An emergency rotation
(reason COMPROMISE) revokes the old version at once and keeps the key usable.
"""

from __future__ import annotations

from datetime import datetime

from qkms.errors import InvalidInputError, KeyRevokedError, KeyStateError, RotationFailedError
from qkms.model import durations
from qkms.model.enums import GRACE_OPERATIONS, Operation, RotationReason, VersionState
from qkms.model.keys import KeyRecord, KeyVersion
from qkms.model.schedules import (  # noqa: F401 - part of the lifecycle vocabulary
    DEFAULT_DELETION_WINDOW,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_ROTATION,
    DELETION_WINDOW_MAX_DAYS,
    DELETION_WINDOW_MIN_DAYS,
    validate_deletion_window,
    validate_schedule,
)

LIVE = frozenset({VersionState.ACTIVE, VersionState.GRACE})
FINAL = frozenset({VersionState.REVOKED, VersionState.DESTROYED})


# -- queries -----------------------------------------------------------------

def active_version(record: KeyRecord) -> KeyVersion | None:
    return next((v for v in record.versions if v.state is VersionState.ACTIVE), None)


def find_version(record: KeyRecord, key_id: str) -> KeyVersion | None:
    return next((v for v in record.versions if v.key_id == key_id), None)


def key_state(record: KeyRecord) -> VersionState:
    """The key's state as a whole: ACTIVE while a version is, else the latest's."""
    if active_version(record) is not None:
        return VersionState.ACTIVE
    return record.current.state


def in_grace(version: KeyVersion, now: datetime) -> bool:
    return (
        version.state is VersionState.GRACE
        and version.grace_until is not None
        and now < version.grace_until
    )


def next_rotation(record: KeyRecord) -> datetime | None:
    if active_version(record) is None:
        return None
    return durations.add(record.last_rotated_at, record.rotation_schedule, "rotation_schedule")


def rotation_due(record: KeyRecord, now: datetime) -> bool:
    due = next_rotation(record)
    return due is not None and now >= due


def next_event(record: KeyRecord) -> datetime | None:
    """The earliest moment a timer must look at this key again."""
    moments = [next_rotation(record)]
    moments += [v.grace_until for v in record.versions if v.state is VersionState.GRACE]
    moments += [v.delete_after for v in record.versions
                if v.state is VersionState.PENDING_DELETION]
    present = [m for m in moments if m is not None]
    return min(present) if present else None


def verifying_versions(record: KeyRecord, now: datetime) -> list[KeyVersion]:
    """Versions that may still verify or decrypt: the active one first, then grace."""
    active = [v for v in record.versions if v.state is VersionState.ACTIVE]
    grace = [v for v in reversed(record.versions) if in_grace(v, now)]
    return active + grace


def refusal(version: KeyVersion, operation: Operation, now: datetime) -> str | None:
    """Why this version's state refuses the operation, or None if it allows it."""
    state = version.state
    if state is VersionState.ACTIVE:
        return None
    if state is VersionState.GRACE:
        if not in_grace(version, now):
            ended = f"{version.grace_until:%Y-%m-%dT%H:%M:%SZ}"
            return f"grace period of {version.key_id} ended at {ended}"
        if operation in GRACE_OPERATIONS:
            return None
        return (f"{version.key_id} is in its grace period and only allows "
                f"{', '.join(sorted(o.value for o in GRACE_OPERATIONS))}")
    if state is VersionState.REVOKED:
        return f"{version.key_id} is revoked" + (f" ({version.reason})" if version.reason else "")
    if state is VersionState.RETIRED:
        return f"{version.key_id} is retired"
    if state is VersionState.PENDING_DELETION:
        return f"{version.key_id} is pending deletion"
    return f"{version.key_id} is destroyed"


def check_use(version: KeyVersion, operation: Operation, now: datetime) -> None:
    why = refusal(version, operation, now)
    if why is None:
        return
    if version.state is VersionState.REVOKED:
        raise KeyRevokedError(f"Key revoked: {why}")
    raise KeyStateError(f"Key version not usable for {operation.value}: {why}")


# -- transitions ----------------------------------------------------------------

def _replace(record: KeyRecord, versions: list[KeyVersion], **changes: object) -> KeyRecord:
    return record.model_copy(update={"versions": versions, **changes})


def _set(version: KeyVersion, state: VersionState, now: datetime, **changes: object) -> KeyVersion:
    return version.model_copy(update={"state": state, "changed_at": now, **changes})


def rotate(
    record: KeyRecord,
    new: KeyVersion,
    *,
    reason: RotationReason,
    now: datetime,
    grace_period: str | None = None,
    immediate: bool = False,
) -> KeyRecord:
    """Make ``new`` the active version; the old one goes to grace, retirement or revocation.

    COMPROMISE revokes the old version at once; ``immediate`` retires it with no
    grace; otherwise it verifies and decrypts until ``now + grace_period``.
    """
    old = active_version(record)
    if old is None:
        raise RotationFailedError(
            f"{record.name} has no active version (it is {key_state(record).value.lower()})"
        )
    if new.state is not VersionState.ACTIVE or new.version != record.current.version + 1:
        raise RotationFailedError(f"new version of {record.name} must be ACTIVE and next in line")
    grace = grace_period or record.grace_period
    if reason is RotationReason.COMPROMISE:
        demoted = _set(old, VersionState.REVOKED, now, reason=reason.value, grace_until=None)
    elif immediate:
        demoted = _set(old, VersionState.RETIRED, now, reason=reason.value)
    else:
        until = durations.add(now, grace, "grace_period")
        demoted = _set(old, VersionState.GRACE, now, grace_until=until, reason=reason.value)
    versions = [demoted if v.key_id == old.key_id else v for v in record.versions] + [new]
    return _replace(record, versions, last_rotated_at=now)


def expire_grace(record: KeyRecord, now: datetime) -> KeyRecord:
    """Retire every version whose grace has ended."""
    if not any(v.state is VersionState.GRACE and not in_grace(v, now) for v in record.versions):
        return record
    versions = [
        _set(v, VersionState.RETIRED, now)
        if v.state is VersionState.GRACE and not in_grace(v, now) else v
        for v in record.versions
    ]
    return _replace(record, versions)


def revoke(record: KeyRecord, reason: str, now: datetime, key_id: str | None = None) -> KeyRecord:
    """Revoke the whole key (``key_id`` None or the active version) or one older version."""
    target = find_version(record, key_id) if key_id else None
    if key_id and target is None:
        raise InvalidInputError("key_id", f"{key_id} is not a version of {record.name}")
    whole_key = target is None or target.state is VersionState.ACTIVE
    if not whole_key and target is not None and target.state in FINAL:
        return record
    versions = [
        _set(v, VersionState.REVOKED, now, reason=reason, grace_until=None)
        if (v.state in LIVE if whole_key else v.key_id == key_id) else v
        for v in record.versions
    ]
    return _replace(record, versions)


def schedule_deletion(record: KeyRecord, window: str, now: datetime) -> KeyRecord:
    validate_deletion_window(window)
    after = durations.add(now, window, "deletion_window")
    versions = [
        v if v.state in (VersionState.DESTROYED, VersionState.PENDING_DELETION)
        else _set(v, VersionState.PENDING_DELETION, now, delete_after=after,
                  state_before_deletion=v.state)
        for v in record.versions
    ]
    return _replace(record, versions)


def cancel_deletion(record: KeyRecord, now: datetime) -> KeyRecord:
    """Restore each pending version's earlier state (a grace that ended meanwhile retires)."""
    restored = []
    for v in record.versions:
        if v.state is VersionState.PENDING_DELETION:
            v = _set(v, v.state_before_deletion or VersionState.RETIRED, now,
                     delete_after=None, state_before_deletion=None)
        restored.append(v)
    return expire_grace(_replace(record, restored), now)


def destroyable(record: KeyRecord, now: datetime) -> list[KeyVersion]:
    return [v for v in record.versions if v.state is VersionState.PENDING_DELETION
            and v.delete_after is not None and now >= v.delete_after]


def destroy(record: KeyRecord, now: datetime) -> KeyRecord:
    """Destroy the versions whose deletion window has passed."""
    due = {v.key_id for v in destroyable(record, now)}
    versions = [_set(v, VersionState.DESTROYED, now, provider_ref={}, public_key=None)
                if v.key_id in due else v for v in record.versions]
    return _replace(record, versions)

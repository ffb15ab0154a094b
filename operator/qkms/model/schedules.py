"""Rotation and deletion defaults from the seed, and the checks on schedules.

They sit in ``model`` because the CRD models default and validate with them
and ``model`` imports nothing else of qkms; ``lifecycle`` re-exports them.
"""

from __future__ import annotations

from datetime import datetime

from qkms.errors import InvalidInputError

from . import durations

DEFAULT_ROTATION = {
    "SIGNING": "P30D",
    "ENCRYPTION": "P90D",
    "KEY_DERIVATION": "P180D",
    "AUTHENTICATION": "P30D",
    "TRANSPORT": "P7D",
}
DEFAULT_GRACE_PERIOD = "P7D"
DELETION_WINDOW_MIN_DAYS = 7
DELETION_WINDOW_MAX_DAYS = 30
DEFAULT_DELETION_WINDOW = "P30D"


def validate_schedule(rotation_schedule: str, grace_period: str) -> None:
    """The grace period must be shorter than the rotation schedule."""
    at = datetime(2000, 1, 1)
    schedule = durations.seconds(rotation_schedule, "rotation_schedule", at=at)
    grace = durations.seconds(grace_period, "grace_period", at=at)
    if grace >= schedule:
        raise InvalidInputError(
            "grace_period",
            f"{grace_period} must be shorter than the rotation schedule {rotation_schedule}",
        )


def validate_deletion_window(window: str) -> None:
    days = durations.seconds(window, "deletion_window") / 86400
    if not DELETION_WINDOW_MIN_DAYS <= days <= DELETION_WINDOW_MAX_DAYS:
        raise InvalidInputError(
            "deletion_window",
            f"{window} must be between {DELETION_WINDOW_MIN_DAYS} and "
            f"{DELETION_WINDOW_MAX_DAYS} days",
        )


def effective_grace_period(schedule: str, requested: str | None,
                           default: str = DEFAULT_GRACE_PERIOD) -> str:
    """The grace a key gets: the one asked for, else the default, unless the default is
    not shorter than the schedule (TRANSPORT's P7D, a test's PT5S): then a fifth of it."""
    if requested is not None:
        return requested
    if durations.seconds(default, "grace_period") < durations.seconds(schedule):
        return default
    return f"PT{max(1, int(durations.seconds(schedule) / 5))}S"

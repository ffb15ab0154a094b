"""Shared fixtures: a service on a temp data dir with a controllable clock."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from qkms.config import Settings
from qkms.model.enums import Environment
from qkms.service import KeyManagementService

pytest_plugins = ["tests.support.servers",  # a missing server skips at the test
                  "tests.support.fixtures"]  # the real control plane, shared by every folder

# `qkms serve` processes the tests start serve from one process (one audit chain per
# environment to read) unless a test asks for data-plane workers (tests/server/test_workers,
# test_worker_metrics; tests/cli runs the defaults a user gets: one worker per core).
os.environ.setdefault("QKMS_DATA_PLANE_WORKERS", "1")


class Clock:
    """A clock tests move by hand, so grace periods and schedules need no sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_service(tmp_path, clock):
    def make(environment: str = "dev", **overrides) -> KeyManagementService:
        settings = Settings(environment=Environment(environment), data_dir=tmp_path / "data",
                            **overrides)
        return KeyManagementService(settings, clock=clock)
    return make


@pytest.fixture
def svc(make_service) -> KeyManagementService:
    return make_service()

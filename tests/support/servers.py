"""One policy for test servers that cannot start: fail in CI, skip loudly elsewhere.

A harness must never skip silently: CI sets ``QKMS_REQUIRE_SERVERS=1`` so a server that
does not start is a failure there, while a developer machine without it gets a skip
whose reason names the server.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def servers_required() -> bool:
    """Whether missing servers fail the run (CI) instead of skipping the tests."""
    return os.environ.get("QKMS_REQUIRE_SERVERS") == "1"


def require_server(name: str, reason: str, *, module_level: bool = False) -> NoReturn:
    """Fail (``QKMS_REQUIRE_SERVERS=1``) or skip the current test because `name` is unusable.

    With `module_level`, call it at import time (e.g. when the server's client library is
    missing) to skip the whole test module, or to fail its collection in CI.
    """
    message = f"{name} is not available: {reason}"
    if servers_required():
        pytest.fail(f"{message} (QKMS_REQUIRE_SERVERS=1 forbids skipping)", pytrace=False)
    pytest.skip(message, allow_module_level=module_level)

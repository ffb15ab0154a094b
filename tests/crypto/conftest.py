"""Session fixtures for the suite tests."""

from __future__ import annotations

import pytest

from tests.crypto.helpers import KeyCache


@pytest.fixture(scope="session")
def keys() -> KeyCache:
    """Keys are generated once per session: RSA-4096 generation alone takes seconds."""
    return KeyCache()

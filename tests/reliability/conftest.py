"""Fixtures shared by the reliability tests: kmock's emulated Kubernetes API in its own process.

Each test module keeps its own helpers; this file holds only what more than one module needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.servers import require_server

try:
    from tests.support.kube import KubeAPI, ServerStartError
except ImportError as exc:  # kmock, kopf or kubernetes is not installed
    IMPORT_ERROR: str | None = f"cannot import the harness: {exc!r}"
else:
    IMPORT_ERROR = None


@pytest.fixture
async def kmock_api(tmp_path: Path) -> AsyncIterator[KubeAPI]:
    """The emulated API on 127.0.0.1 (a free port), stopped after the test."""
    if IMPORT_ERROR:
        require_server("kmock", IMPORT_ERROR)
    api = KubeAPI(tmp_path / "kube")
    try:
        await api.start()
    except (ServerStartError, OSError) as exc:
        await api.close()
        require_server("kmock", f"the emulated Kubernetes API did not start: {exc}")
    try:
        yield api
    finally:
        await api.close()

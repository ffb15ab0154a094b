"""The policy for test servers that cannot start (tests/support/servers.py): a failure in CI
(``QKMS_REQUIRE_SERVERS=1``), a skip naming the server elsewhere, never a silent skip."""

from __future__ import annotations

import pytest

from tests.support.servers import require_server


def test_require_server_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "the Kubernetes control plane"
    monkeypatch.setenv("QKMS_REQUIRE_SERVERS", "1")
    with pytest.raises(pytest.fail.Exception, match=f"{name} is not available: no port"):
        require_server(name, "no port")
    monkeypatch.delenv("QKMS_REQUIRE_SERVERS")
    with pytest.raises(pytest.skip.Exception, match=f"{name} is not available: no port"):
        require_server(name, "no port")

"""The policy for test servers that cannot start (tests/support/servers.py): a failure in CI
(``QKMS_REQUIRE_SERVERS=1``), a skip naming the server elsewhere, never a silent skip."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


MODULE = '''\
import contextlib

import pytest

from tests.support.servers import require_server


@pytest.fixture
def server():
    require_server("a fixture's server", "not here")


@contextlib.contextmanager
def started():
    require_server("a helper's server", "not here")
    yield


def test_fixture(server):
    pass


def test_helper():
    x = 1
    with started():
        pass
'''
AT_IMPORT = '''\
from tests.support.servers import require_server

require_server("a module's server", "not here", module_level=True)


def test_never():
    pass
'''


def test_a_missing_server_is_reported_at_the_test(tmp_path) -> None:
    """Not at tests/support/servers.py: at the test (a fixture's skip), at the test's line
    that led to it (through a helper), at the module's line (a module-level skip)."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.support.servers"]\n')
    (tmp_path / "test_servers.py").write_text(MODULE)
    (tmp_path / "test_at_import.py").write_text(AT_IMPORT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "operator")])}
    env.pop("QKMS_REQUIRE_SERVERS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), str(tmp_path)]
    skipped = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    out = skipped.stdout
    assert skipped.returncode == 0 and "3 skipped" in out, out + skipped.stderr
    found = set(re.findall(r"^SKIPPED \[1\] (\S+):(\d+): (.*) is not available", out, re.M))
    assert found == {("test_servers.py", "19", "a fixture's server"),
                     ("test_servers.py", "25", "a helper's server"),
                     ("test_at_import.py", "3", "a module's server")}, out
    assert "servers.py" not in out.replace("test_servers.py", ""), out
    required = subprocess.run([*command, "--continue-on-collection-errors"], cwd=tmp_path,
                              env={**env, "QKMS_REQUIRE_SERVERS": "1"}, capture_output=True,
                              text=True, timeout=120)
    out = required.stdout
    assert required.returncode == 1 and "1 failed, 2 errors" in out, out
    assert "skipped" not in out and out.count("forbids skipping") >= 3, out

"""One policy for test servers that cannot start: fail in CI, skip loudly elsewhere.

A harness must never skip silently: CI sets ``QKMS_REQUIRE_SERVERS=1`` so a server that
does not start is a failure there, while a developer machine without it gets a skip
whose reason names the server, reported at the test that needed it (not here):

* ``require_server`` hides its own frame from pytest (``__tracebackhide__``), so a skip
  raised while a module is imported is reported at the module's line that asked;
* a skip raised in a fixture is reported at the test by pytest itself;
* a skip raised while the test runs, through helpers and context managers, is reported
  at the test function's line that led to it by this module's ``pytest_runtest_makereport``
  (a plugin: ``pytest_plugins`` in tests/conftest.py).
"""

from __future__ import annotations

import os
from pathlib import Path
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
    __tracebackhide__ = True
    message = f"{name} is not available: {reason}"
    if servers_required():
        pytest.fail(f"{message} (QKMS_REQUIRE_SERVERS=1 forbids skipping)", pytrace=False)
    try:
        pytest.skip(message, allow_module_level=module_level)
    except pytest.skip.Exception as skip:
        skip.qkms_server_missing = True  # type: ignore[attr-defined]  # for the report hook
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> object:
    """A server skip raised while the test ran: at the test function's line that led to it
    (through helpers), else at the test's definition."""
    report = yield
    excinfo = call.excinfo
    if (call.when == "call" and excinfo is not None and report.skipped
            and getattr(excinfo.value, "qkms_server_missing", False)
            and isinstance(report.longrepr, tuple)):
        here = Path(item.path)
        test = getattr(item, "originalname", item.name)  # without the parameters
        lines = [entry.lineno for entry in excinfo.traceback
                 if entry.name == test and Path(entry.path) == here]
        if lines:
            line = lines[-1] + 1
        else:
            line = (item.reportinfo()[1] or 0) + 1
        report.longrepr = (os.fspath(here), line, report.longrepr[2])
    return report

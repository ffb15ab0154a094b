"""The README's two commands on a fresh machine: what they need is stated (issue 12).

* The HSM tests need SoftHSM2, a system package: the README's test line says so, and with
  ``QKMS_REQUIRE_SERVERS=1`` its absence fails with the command that installs it.
* ``pip install -e .``, ``pip install -e '.[test]'`` and the image's extras keep one
  ``cryptography``: nothing any of them pulls in caps it below the core's own cap.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1).strip().splitlines()


def test_the_readme_test_line_names_softhsm2() -> None:
    serve, test = readme_commands()[:2]
    assert serve.startswith("pip install -e . && qkms serve")
    assert test.startswith("pip install -e '.[test]' && python -m pytest")
    assert "apt-get install softhsm2" in test and ".ci/run" in test
    assert re.search(r"^apt-get install .*softhsm2", (ROOT / ".ci" / "run").read_text(), re.M)
    # The servers built with Go: Go must be there, or ready binaries named, as the tests'
    # section says and .ci/run does.
    assert "Go, which must be installed" in test and "apt-get install golang" in test
    assert "QKMS_CONTROLPLANE_BIN" in test and "QKMS_KUBO_BIN" in test
    readme = (ROOT / "README.md").read_text()
    assert "on a machine without Go, set `QKMS_CONTROLPLANE_BIN`" in readme
    assert "`QKMS_KUBO_BIN` to a `kubo` binary" in readme
    assert "apt-get install -y -qq golang" in (ROOT / ".ci" / "run").read_text()


def test_missing_softhsm2_fails_with_the_install_command_in_ci(tmp_path) -> None:
    """The HSM fixture, run where ``softhsm2-util`` cannot be found."""
    (tmp_path / "test_hsm_fixture.py").write_text(
        "from tests.support.softhsm import softhsm  # noqa: F401\n\n"
        "def test_uses_the_token(softhsm):\n    assert softhsm.library\n")
    bare = tmp_path / "bin"
    bare.mkdir()
    path = os.pathsep.join([str(bare)] + [d for d in os.environ.get("PATH", "").split(os.pathsep)
                                          if d and not (Path(d) / "softhsm2-util").exists()])
    env = {**os.environ, "PATH": path, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                                      str(ROOT / "operator")])}
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
            str(tmp_path), "-rs", str(tmp_path / "test_hsm_fixture.py")]
    required = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env={**env, "QKMS_REQUIRE_SERVERS": "1"})
    assert required.returncode == 1, required.stdout + required.stderr
    assert "apt-get install softhsm2" in required.stdout
    assert "QKMS_REQUIRE_SERVERS=1 forbids skipping" in required.stdout
    env.pop("QKMS_REQUIRE_SERVERS", None)
    skipped = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             env=env)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    assert "apt-get install softhsm2" in skipped.stdout
    assert shutil.which("softhsm2-util", path=path) is None


def _closure(project: dict, extras: set[str]) -> dict[str, list[Requirement]]:
    """Every requirement reachable from qkms with ``extras`` through installed metadata,
    by distribution name (markers evaluated for the extras asked for)."""
    optional = project["optional-dependencies"]
    found: dict[str, list[Requirement]] = {}
    stack = [(Requirement(r), None) for r in project["dependencies"]]
    stack += [(Requirement(r), None) for e in extras for r in optional[e]]
    visited: set[tuple[str, frozenset[str]]] = set()
    while stack:
        req, extra = stack.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra or ""}):
            continue
        name = canonicalize_name(req.name)
        found.setdefault(name, []).append(req)
        key = (name, frozenset(req.extras))
        if key in visited:
            continue
        visited.add(key)
        if name == "qkms":
            stack += [(Requirement(r), None) for e in req.extras for r in optional[e]]
            continue
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # not installed here: its own requirements cannot be read offline
        for text in requires:
            inner = Requirement(text)
            if inner.marker is None:
                stack.append((inner, None))
            else:
                stack += [(inner, e) for e in (None, *req.extras)]
    return found


def _upper(requirements: list[Requirement]) -> Version | None:
    """The lowest upper bound (``<``) those requirements put on a version, if any."""
    bounds = [Version(s.version) for r in requirements for s in r.specifier if s.operator == "<"]
    return min(bounds, default=None)


def dockerfile_extras() -> set[str]:
    """The extras the image installs (its ``pip install '.[...]'``)."""
    found = re.findall(r"pip install '\.\[([a-z0-9,-]+)\]'", (ROOT / "Dockerfile").read_text())
    assert len(found) == 1, found
    return set(found[0].split(","))


def test_the_test_extra_keeps_the_core_cryptography() -> None:
    """A plain install, the test extra, the image's extras and every extra at once resolve
    ``cryptography`` under one cap: the core's own, which is at or below every cap of what
    they pull in (azure-identity's msal caps it below 51), so none gets another version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = next(Requirement(r) for r in project["dependencies"]
                if canonicalize_name(Requirement(r).name) == "cryptography")
    assert not any(s.operator in ("==", "~=", "===", "<=") for s in core.specifier)
    cap = _upper([core])
    image = dockerfile_extras()
    assert {"operator", "azure"} <= image <= set(project["optional-dependencies"])
    installs = {"pip install .": set(), "the test extra": {"test"}, "the image": image,
                "every extra": set(project["optional-dependencies"])}
    for install, extras in installs.items():
        found = _closure(project, extras).get("cryptography", [])
        pins = {str(r) for r in found if any(s.operator in ("==", "~=", "===")
                                             for s in r.specifier)}
        assert pins == set(), f"{install} pins cryptography: {pins}"
        assert _upper(found) == cap, f"{install} caps cryptography at {_upper(found)}, " \
                                     f"not at the core's {cap}: {sorted(map(str, found))}"
    if "msal" in _closure(project, {"azure"}):  # its metadata is here: the cap is its own
        assert cap == _upper([Requirement(r) for r in distribution("msal").requires or []
                              if Requirement(r).name == "cryptography"]), "lift the cap"
    readme = (ROOT / "README.md").read_text()
    assert f"below {cap}" in readme and "msal" in readme and ".[operator,vault,aws,azure" in readme

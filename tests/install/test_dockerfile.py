"""The image: no Docker engine runs here, so the Dockerfile is read and its build replayed.

Checked: the base, the user, the entrypoint and ports; every COPY source exists and is in the
build context that .dockerignore leaves (which keeps out tests/ and .git); and the package,
built from exactly that context, makes a wheel whose extras pip can resolve to wheels alone.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.install.helpers import ROOT

BASE = "python:3.11-slim-bookworm"  # the ARG's default: the image users pull
# Every provider's SDK is in the image (the audit chain needs no extra: its libraries are
# core); tests/image/test_image.py builds it and imports them.
EXTRAS = ["operator", "vault", "aws", "azure", "hsm"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        word, _, args = text.partition(" ")
        out.append((word.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line, Docker's rules: Go filepath.Match plus ``**``."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        line = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex, i = regex + line[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((exclude, re.compile(regex)))
    return patterns


def in_context(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a file is sent to the builder: the last pattern matching it, or any of its
    parent folders, decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for exclude, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = not exclude
    return included


def context_files() -> list[str]:
    """Files and symlinks sent to the builder (Docker sends a symlink as a symlink)."""
    patterns = dockerignore_patterns()
    files = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT).as_posix()
        if (path.is_symlink() or path.is_file()) and in_context(relative, patterns):
            files.append(relative)
    return sorted(files)


def test_image_shape() -> None:
    steps = instructions()
    args = [a for word, a in steps if word == "ARG"]
    assert f"BASE={BASE}" in args, "ARG BASE defaults to the registry image users pull"
    froms = [args.split()[0] for word, args in steps if word == "FROM"]
    assert froms and all(image == "${BASE}" for image in froms)
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    last = {word: args for word, args in final}
    assert last["USER"].split(":")[0] == "10001"
    assert json.loads(last["ENTRYPOINT"]) == ["qkms"]
    assert json.loads(last["CMD"]) == ["operator"]
    assert set(last["EXPOSE"].split()) == {"8080", "8443"}
    assert any(w == "RUN" and "useradd" in a and "--uid 10001" in a for w, a in final)


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    context = context_files()
    copies = [shlex.split(args) for word, args in instructions() if word == "COPY"]
    local = [c for c in copies if not any(a.startswith("--from") for a in c)]
    assert local, "no COPY from the build context"
    for copy in local:
        for source in [a for a in copy if not a.startswith("--")][:-1]:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file in the repository"
            prefix = source.rstrip("/")
            assert any(f == prefix or f.startswith(prefix + "/") for f in context), \
                f"COPY {source}: excluded by .dockerignore"
    assert "operator/qkms/cli/__init__.py" in context and "pyproject.toml" in context
    # Every symlink in the context points at something that is in it too.
    for link in [f for f in context if (ROOT / f).is_symlink()]:
        target = (ROOT / link).resolve().relative_to(ROOT).as_posix()
        assert any(f == target or f.startswith(target + "/") for f in context), \
            f"{link} -> {target}, which is not in the build context"
    for unwanted in ("tests/", ".git/", ".qkms/", "helm/", "manifests/"):
        assert not [f for f in context if f.startswith(unwanted)], \
            f"{unwanted} is in the build context"
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]


def test_image_installs_the_operator_extras() -> None:
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    match = re.search(r"pip install '\.\[([a-z,]+)\]'", runs)
    assert match and match[1].split(",") == EXTRAS
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(EXTRAS) <= set(extras)
    assert any("kopf" in requirement for requirement in extras["operator"])


@pytest.fixture(scope="module")
def clean_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exactly the files the builder would receive, symlinks kept as symlinks."""
    target = tmp_path_factory.mktemp("context")
    for relative in context_files():
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / relative).is_symlink():
            os.symlink(os.readlink(ROOT / relative), target / relative)
        else:
            shutil.copy2(ROOT / relative, target / relative)
    return target


def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_the_build_context_builds_the_package(clean_checkout: Path, tmp_path: Path) -> None:
    """`pip install '.[operator]'` as the Dockerfile runs it: the wheel builds from the
    context alone, carries the sources, the bundled examples and the `qkms` command, and its
    extras resolve (on this CPython 3.11 glibc machine, like the base image) to wheels only,
    so the image needs no compiler."""
    pip("wheel", "--no-deps", "--quiet", ".", "-w", str(tmp_path), cwd=clean_checkout)
    (wheel,) = tmp_path.glob("qkms-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert {"qkms/cli/__init__.py", "qkms/k8s/main.py", "qkms/k8s/handlers.py"} <= names
    assert any(n.startswith("qkms/examples/") and n.endswith(".yaml") for n in names)
    assert re.search(r"^qkms = qkms\.cli:main$", entry_points, re.M)
    for extra in EXTRAS:
        assert f"Provides-Extra: {extra}" in metadata
    report = tmp_path / "report.json"
    pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
        f"{wheel}[{','.join(EXTRAS)}]", cwd=tmp_path)
    installs = json.loads(report.read_text())["install"]
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in installs}
    assert {"qkms", "kopf", "kubernetes", "aiohttp", "libipld", "hvac", "boto3",
            "azure-keyvault-keys", "azure-identity", "python-pkcs11"} <= names
    sdists = [item["download_info"]["url"] for item in installs
              if not item["download_info"]["url"].endswith(".whl")
              and item["metadata"]["name"] != "qkms"]
    assert sdists == [], f"would build from source (needs a compiler in the image): {sdists}"

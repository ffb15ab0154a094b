"""The package's layers and its types are checked like any other defect.

``lint-imports`` holds the import contracts in pyproject.toml (``[tool.importlinter]``):
a module imports only from layers below its own, and the audit trail never imports crypto
or the service. ``mypy`` checks the package with ``[tool.mypy]``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which(tool)
    assert path, f"{tool} is a test dependency: pip install -e '.[test]'"
    return subprocess.run([path, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept() -> None:
    proc = _run("lint-imports", "--no-cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean() -> None:
    proc = _run("mypy")  # files and options: [tool.mypy]
    assert proc.returncode == 0, proc.stdout + proc.stderr

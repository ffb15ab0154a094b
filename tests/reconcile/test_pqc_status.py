"""qkms pqc status: keys on quantum-vulnerable algorithms, from a manifests folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_lists_quantum_vulnerable_keys_with_the_deadline(tmp_path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(ROOT / "examples", folder)
    proc = subprocess.run([sys.executable, "-m", "qkms", "pqc", "status", "--manifests",
                           str(folder)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "operator")})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["key"], r["algorithm"]) for r in rows] == [
        ("payments/user-service-signing", "Ed25519")]
    assert rows[0]["deadline"].startswith("2030-12-31") and rows[0]["quantum_vulnerable"]

"""``qkms serve`` as a process, for the tests of its data-plane workers: a tokens file, a
clean environment, one request per connection (so the kernel may give it to any worker),
a start that waits for the data plane and a stop."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIGN = "/v1/keys/payments/user-service-signing:sign"


def write_tokens(folder: Path, token: str, verbs: list[str]) -> Path:
    """A tokens file: ``token`` for payments/checkout, granted ``verbs`` in payments."""
    path = folder / "tokens.yaml"
    path.write_text(f"tokens:\n  - serviceAccount: payments/checkout\n    token: {token}\n"
                    "grants:\n  - serviceAccount: payments/checkout\n"
                    f"    namespace: payments\n    verbs: [{', '.join(verbs)}]\n")
    return path


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without the caller's qkms and prometheus-client settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QKMS_", "PROMETHEUS_"))}
    return {**env, "PYTHONPATH": str(ROOT / "operator"), "QKMS_DATA_DIR": str(tmp_path / "data"),
            **extra}


def request(port: int, token: str, method: str, path: str,
            body: bytes | None = None) -> tuple[int, bytes]:
    """One request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body, {"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def sign(port: int, token: str) -> tuple[int, bytes]:
    return request(port, token, "POST", SIGN,
                   json.dumps({"input": base64.b64encode(b"m").decode()}).encode())


def start(tmp_path: Path, port: int, tokens: Path,
          env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    """``qkms serve`` of examples/ on ``port``; returns once it says its data plane is on,
    with the lines it printed until then."""
    proc = subprocess.Popen([sys.executable, "-m", "qkms", "serve", "--manifests",
                             str(ROOT / "examples"), "--listen", f"127.0.0.1:{port}",
                             "--tokens", str(tokens)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "data plane on" in line:
            break
    return proc, lines


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM; its exit code and stderr, for the caller to check."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err

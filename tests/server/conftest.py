"""A running data plane: standalone mode over the examples plus a few keys, on 127.0.0.1."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from qkms.config import Settings
from qkms.server.api import DataPlane
from qkms.server.app import PLANE, start_data_plane
from qkms.server.auth import TokensFile
from qkms.standalone import Standalone
from tests.server.common import ALL_VERBS, TOKENS
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
EXTRA = """
apiVersion: v1
kind: Namespace
metadata: {name: billing, labels: {qkms.io/environment: dev}}
---
apiVersion: qkms.io/v1alpha1
kind: ManagedKey
metadata: {name: derivation, namespace: payments}
spec: {usage: KEY_DERIVATION, algorithm: HKDF-SHA256, owner: payments}
---
apiVersion: qkms.io/v1alpha1
kind: ManagedKey
metadata: {name: hybrid-kem, namespace: payments}
spec: {usage: ENCRYPTION, algorithm: X-Wing, owner: payments}
---
apiVersion: qkms.io/v1alpha1
kind: ManagedKey
metadata: {name: ecdsa, namespace: payments}
spec: {usage: SIGNING, algorithm: ECDSA-P256, owner: payments}
---
apiVersion: qkms.io/v1alpha1
kind: ManagedKey
metadata: {name: falcon, namespace: payments}
spec: {usage: SIGNING, algorithm: Falcon-512, owner: payments}
---
apiVersion: qkms.io/v1alpha1
kind: ManagedKey
metadata: {name: rsa-oaep, namespace: payments}
spec: {usage: ENCRYPTION, algorithm: RSA-2048, owner: payments}
"""


def tokens_file(path: Path) -> Path:
    expired = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    data = {
        "tokens": [
            {"serviceAccount": "payments/checkout", "token": TOKENS["checkout"]},
            {"serviceAccount": "payments/reader", "token": TOKENS["reader"]},
            {"serviceAccount": "billing/app", "token": TOKENS["billing"]},
            {"serviceAccount": "checkout-prod/app", "token": TOKENS["prod"]},
            {"serviceAccount": "payments/old", "token": TOKENS["expired"], "expires": expired},
            {"serviceAccount": "payments/auditor", "token": TOKENS["auditor"]},
            {"serviceAccount": "payments/monitor", "token": TOKENS["monitor"]},
        ],
        "grants": [
            {"serviceAccount": "payments/checkout", "namespace": "payments", "verbs": ALL_VERBS},
            {"serviceAccount": "billing/app", "namespace": "billing", "verbs": ALL_VERBS},
            {"serviceAccount": "checkout-prod/app", "namespace": "payments", "verbs": ALL_VERBS},
            {"serviceAccount": "payments/old", "namespace": "payments", "verbs": ALL_VERBS},
            {"serviceAccount": "payments/auditor", "namespace": "payments", "verbs": ["audit"]},
            {"serviceAccount": "payments/monitor", "namespace": "payments", "verbs": ["metrics"]},
        ],
    }
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Plane:
    url: str
    standalone: Standalone
    seen: list
    runner: Any = None

    def service(self):
        return self.standalone.registry.all()[0]

    @property
    def data_plane(self) -> DataPlane:
        return self.runner.app[PLANE]


@pytest.fixture
async def plane(tmp_path) -> Plane:
    folder = tmp_path / "manifests"
    shutil.copytree(ROOT / "examples", folder)
    (folder / "extra.yaml").write_text(EXTRA)
    standalone = Standalone(Settings(data_dir=tmp_path / "data"), folder, tmp_path / "out",
                            say=lambda line: None)
    standalone.refresh()
    await standalone.reconcile_all()
    auth = TokensFile(tokens_file(tmp_path / "tokens.yaml"))
    port = free_port()
    runner = await start_data_plane(standalone, standalone.registry, auth, auth,
                                    f"127.0.0.1:{port}")
    seen: list = []
    for service in standalone.registry.all():
        service.on("auditEvent", seen.append)
    try:
        yield Plane(f"http://127.0.0.1:{port}", standalone, seen, runner)
    finally:
        await runner.cleanup()

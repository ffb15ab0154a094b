"""The authorization matrix of the data plane, printed row by row, every denial audited.

A data plane (standalone mode, as ``qkms serve`` runs it) on 127.0.0.1 serves
``payments/signer`` (dev). Callers, from the tokens file ``tests/server/conftest.py``
writes: none, an unknown token, an expired one, a ServiceAccount with no grant, one of
another namespace (``billing``, also dev), one of another environment
(``checkout-prod/app``, prod, even though it holds a grant in ``payments``), and the
allowed one. Each denial must be the answer in the issue's table and must reach the
audit chain as a ``denied`` entry naming the caller, or, when the same source was refused
with the same code within the interval (``server/denials.py``: a client must not flood the
chain), be counted into that source's aggregate entry, written with its ``count`` when the
interval ends (here, at shutdown). The last row is the operator side:
a ManagedKey whose ``policyRef`` names the prod KeyPolicy is refused (Ready=False,
EnvironmentMismatch, an Event) and no key is made for it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from qkms.config import Settings
from qkms.server.app import PLANE, start_data_plane
from qkms.server.auth import TokensFile
from qkms.standalone import Standalone
from tests.server.common import TOKENS
from tests.server.conftest import tokens_file
from tests.support.server_process import free_port

MANIFESTS = [
    {"apiVersion": "v1", "kind": "Namespace",
     "metadata": {"name": "payments", "labels": {"qkms.io/environment": "dev"}}},
    {"apiVersion": "v1", "kind": "Namespace",
     "metadata": {"name": "billing", "labels": {"qkms.io/environment": "dev"}}},
    {"apiVersion": "v1", "kind": "Namespace",
     "metadata": {"name": "checkout-prod", "labels": {"qkms.io/environment": "prod"}}},
    {"apiVersion": "qkms.io/v1alpha1", "kind": "KeyPolicy", "metadata": {"name": "prod"},
     "spec": {"environment": "prod"}},
    {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
     "metadata": {"name": "signer", "namespace": "payments"},
     "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "payments"}},
    {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
     "metadata": {"name": "borrows-prod-policy", "namespace": "payments"},
     "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "payments",
              "policyRef": "prod"}},
]

# (case, token, expected HTTP status, expected error code)
MATRIX = [
    ("no token", None, 401, "unauthenticated"),
    ("bad token", "not-a-token", 401, "unauthenticated"),
    ("expired token", TOKENS["expired"], 401, "unauthenticated"),
    ("token without RBAC", TOKENS["reader"], 403, "forbidden"),
    ("token of another namespace", TOKENS["billing"], 403, "forbidden"),
    ("token of another environment", TOKENS["prod"], 403, "forbidden"),
    ("token with RBAC (allowed)", TOKENS["checkout"], 200, None),
]


@dataclass
class Plane:
    url: str
    standalone: Standalone
    seen: list[Any]
    said: list[str]
    runner: Any


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "keys.yaml").write_text(yaml.safe_dump_all(MANIFESTS))
    said: list[str] = []
    standalone = Standalone(Settings(data_dir=tmp_path / "data"), folder, tmp_path / "out",
                            say=said.append)
    standalone.refresh()
    await standalone.reconcile_all()
    auth = TokensFile(tokens_file(tmp_path / "tokens.yaml"))
    port = free_port()
    runner = await start_data_plane(standalone, standalone.registry, auth, auth,
                                    f"127.0.0.1:{port}")
    seen: list[Any] = []
    for service in standalone.registry.all():
        service.on("auditEvent", seen.append)
    try:
        yield Plane(f"http://127.0.0.1:{port}", standalone, seen, said, runner)
    finally:
        await runner.cleanup()
        for service in standalone.registry.all():
            await service.close()


async def sign(plane: Plane, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"input": base64.b64encode(b"authz").decode()}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(plane.url + "/v1/keys/payments/signer:sign", json=body) as rsp:
            return rsp.status, await rsp.json(content_type=None)


async def test_authorization_matrix_every_denial_audited(plane: Plane) -> None:
    failures = []
    denials = plane.runner.app[PLANE].denials
    for case, token, expected, code in MATRIX:
        before, counted_before = len(plane.seen), denials.aggregated
        status, body = await sign(plane, token)
        entries = plane.seen[before:]
        entry = entries[-1] if entries else None
        got_code = (body.get("error") or {}).get("code")
        written = (entry is not None and entry.key_name == "payments/signer"
                   and entry.operation == "SIGN"
                   and entry.result == ("success" if expected == 200 else "denied"))
        counted = expected != 200 and not entries and denials.aggregated == counted_before + 1
        audited = written or counted
        actor = f"{entry.actor.type}:{entry.actor.id}" if entry else "-"
        ok = status == expected and got_code == code and audited
        how = "yes" if written else "counted into its source's entry" if counted else "NO"
        print(f"FIGURE authz: {case} -> {status}{' ' + got_code if got_code else ''} "
              f"(expected {expected}) audited={how} "
              f"[{entry.result if entry else '-'} by {actor}] {'PASS' if ok else 'FAIL'}")
        if not ok:
            failures.append((case, status, body, entry))
    # The counted denials reach the chain as one entry each, with their count.
    pending = denials.aggregated
    before = len(plane.seen)
    await denials.flush()
    counts = sum(int(e.details.get("count", 0)) for e in plane.seen[before:]
                 if e.result == "denied")
    print(f"FIGURE authz: {pending} aggregated denials written with their count: {counts}")
    assert counts == pending

    status_path = plane.standalone.out / "status" / "payments" / "borrows-prod-policy.json"
    status = yaml.safe_load(status_path.read_text())
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    made = [r.name for s in plane.standalone.registry.all() for r in s.user_records()]
    event = next((line for line in plane.said if "borrows-prod-policy" in line), "")
    refused = (ready["status"] == "False" and ready["reason"] == "EnvironmentMismatch"
               and "payments/borrows-prod-policy" not in made
               and "EnvironmentMismatch" in event)
    print(f"FIGURE authz: KeyPolicy of another environment referenced by a ManagedKey -> "
          f"{'refused' if refused else 'NOT refused'} (expected refused): Ready="
          f"{ready['status']} {ready['reason']}: {ready['message']}; Event "
          f"{'yes' if event else 'NO'}; key made: {'payments/borrows-prod-policy' in made}; "
          f"audited as an Event (no key operation, so no chain entry) "
          f"{'PASS' if refused else 'FAIL'}")
    assert not failures, failures
    assert refused, (ready, event, made)

"""Two data-plane replicas sharing the state (the store; Secrets in a cluster): each serves
every key, and a rotation or revocation made through one is honoured by the other within
the catalog TTL. Each replica writes its own audit log (Settings.audit_writer,
QKMS_AUDIT_WRITER)."""

from __future__ import annotations

import asyncio
import base64
import shutil
from dataclasses import replace
from pathlib import Path

import aiohttp

from qkms.config import Settings
from qkms.server.app import start_data_plane
from qkms.server.auth import TokensFile
from qkms.standalone import Standalone
from tests.server.common import TOKENS
from tests.server.conftest import tokens_file
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
SIGN = "/v1/keys/payments/user-service-signing:sign"


async def test_two_replicas_share_keys_and_see_each_others_rotations(tmp_path):
    folder = tmp_path / "manifests"
    shutil.copytree(ROOT / "examples", folder)
    auth = TokensFile(tokens_file(tmp_path / "tokens.yaml"))
    settings = Settings(data_dir=tmp_path / "data", catalog_ttl=0.0)
    replicas, urls = [], []
    for name in ("replica-a", "replica-b"):
        replica = Standalone(replace(settings, audit_writer=name), folder,
                             tmp_path / f"out-{name}", say=lambda line: None)
        replica.refresh()
        if name == "replica-a":
            await replica.reconcile_all()  # the active reconciler; b only serves
        port = free_port()
        runner = await start_data_plane(replica, replica.registry, auth, auth,
                                        f"127.0.0.1:{port}")
        replicas.append((replica, runner))
        urls.append(f"http://127.0.0.1:{port}")
    headers = {"Authorization": f"Bearer {TOKENS['checkout']}"}
    body = {"input": base64.b64encode(b"m").decode()}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            async def sign(url: str) -> dict:
                async with session.post(url + SIGN, json=body) as rsp:
                    assert rsp.status == 200, await rsp.text()
                    return await rsp.json()

            first = await asyncio.gather(*(sign(urls[i % 2]) for i in range(200)))
            assert len({r["key_id"] for r in first}) == 1
            service_a = replicas[0][0].registry.all()[0]
            rotation = await service_a.rotate_key("payments/user-service-signing",
                                                  reason="COMPROMISE")
            after = await sign(urls[1])  # replica b signs with the new version at once
            assert after["key_id"] == rotation.new_key_id
            verify = {"input": body["input"], "signature": first[0]["signature"]}
            async with session.post(urls[1] + SIGN.replace(":sign", ":verify"),
                                    json=verify) as rsp:
                # revoked through replica a: no longer a version that may verify
                assert rsp.status == 200 and (await rsp.json()) == {"valid": False}
        audit = sorted(p.name for p in (tmp_path / "data" / "dev" / "audit").iterdir())
        assert audit == ["replica-a", "replica-b"]
    finally:
        for replica, runner in replicas:
            await runner.cleanup()
            for service in replica.registry.all():
                await service.close()

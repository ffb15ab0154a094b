"""Pushing blocks to an IPFS node's RPC API, against a stand-in for kubo.

``KuboStandIn`` is NOT kubo: no kubo binary can be installed here (the npm
``kubo`` package downloads one at install time).  It is a small aiohttp app on
127.0.0.1 that speaks the one call the pusher uses, ``POST
/api/v0/block/put?cid-codec=dag-cbor&mhtype=sha2-256`` (multipart file), the
way kubo answers it (``{"Key": cid, "Size": n}``), computing each CID itself
with ``multiformats`` so a block that does not match our CID is caught.  It
can fail on purpose to exercise the retries.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from multiformats import CID, multihash

from qkms.audit.chain import AuditChain
from qkms.audit.encoding import cid_str
from qkms.audit.store import iter_log
from tests.audit.helpers import AuditKey, make_entry


class KuboStandIn:
    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}
        self.puts = 0
        self.fail_next = 0
        self.runner: web.AppRunner | None = None

    async def put(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("cid-codec") != "dag-cbor" or query.get("mhtype") != "sha2-256":
            return web.json_response({"Message": "unexpected codec"}, status=400)
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"Message": "node busy"}, status=500)
        reader = await request.multipart()
        part = await reader.next()
        data = await part.read()
        cid = str(CID("base32", 1, "dag-cbor", multihash.digest(bytes(data), "sha2-256")))
        self.blocks[cid] = bytes(data)
        self.puts += 1
        return web.json_response({"Key": cid, "Size": len(data)})

    async def start(self, port: int) -> str:
        app = web.Application()
        app.router.add_post("/api/v0/block/put", self.put)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def kubo():
    node = KuboStandIn()
    yield node
    await node.stop()


async def caught_up(chain: AuditChain, seconds: float = 20) -> dict:
    for _ in range(int(seconds / 0.05)):
        status = chain._pusher.status()
        if status["lag_entries"] == 0 and status["pushed_seq"] == chain.size:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"push lag never reached 0: {chain._pusher.status()}")


def all_cids(folder) -> set[str]:
    return {cid_str(r.cid) for r in iter_log(folder)}


async def test_every_block_reaches_the_node_with_our_cid(tmp_path, kubo):
    endpoint = await kubo.start(free_port())
    async with AuditChain(tmp_path, signer=AuditKey(), checkpoint_every=10,
                          ipfs_endpoint=endpoint) as chain:
        for i in range(35):
            await chain.append(make_entry(i))
        status = await caught_up(chain)
        assert status["errors"] == 0 and status["lag_seconds"] == 0
        assert (await chain.health())["ipfs"]["endpoint"] == endpoint
    assert all_cids(tmp_path) <= set(kubo.blocks)
    assert len(kubo.blocks) == 35 + 4  # checkpoints at 10, 20, 30 and at close (35)


async def test_failures_are_retried_and_the_lag_is_exposed(tmp_path, kubo):
    endpoint = await kubo.start(free_port())
    kubo.fail_next = 3
    async with AuditChain(tmp_path, ipfs_endpoint=endpoint) as chain:
        chain._pusher.max_backoff = 0.2
        for i in range(10):
            await chain.append(make_entry(i))
        status = await caught_up(chain)
    assert status["errors"] >= 1 and "HTTP 500" in status["last_error"]
    assert all_cids(tmp_path) <= set(kubo.blocks)


async def test_a_node_that_is_down_never_blocks_appends_and_is_caught_up(tmp_path, kubo):
    port = free_port()
    async with AuditChain(tmp_path, ipfs_endpoint=f"http://127.0.0.1:{port}") as chain:
        chain._pusher.max_backoff = 0.2
        for i in range(20):
            await asyncio.wait_for(chain.append(make_entry(i)), timeout=2)
        await asyncio.sleep(0.3)
        status = chain._pusher.status()
        assert status["lag_entries"] == 20 and status["lag_seconds"] > 0
        await kubo.start(port)
        await caught_up(chain)
    assert len(kubo.blocks) == 20


async def test_the_cursor_survives_a_restart(tmp_path, kubo):
    endpoint = await kubo.start(free_port())
    async with AuditChain(tmp_path, ipfs_endpoint=endpoint) as chain:
        for i in range(10):
            await chain.append(make_entry(i))
        await caught_up(chain)
    puts = kubo.puts
    async with AuditChain(tmp_path, ipfs_endpoint=endpoint) as chain:
        await chain.append(make_entry(10))
        await caught_up(chain)
    assert kubo.puts == puts + 1

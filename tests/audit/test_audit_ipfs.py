"""The audit chain on a real IPFS node (kubo, offline, on 127.0.0.1), and anchored verify.

Every block reaches the node under our CID; failures are retried; a node that is down
never blocks appends and is caught up; the cursor survives a restart. Each checkpoint is
anchored in the node's MFS, and ``qkms audit verify --anchor`` catches the two attacks a
writer of the audit folder can make that signatures alone cannot: cutting the log *and*
its checkpoint file back to an earlier checkpoint, and re-signing a rebuilt log under a
fresh key. Both attacks are reproduced first: without an anchor they verify as OK.

``FaultyProxy`` is ours, for fault injection only: it forwards to kubo and answers the
first N block puts with HTTP 500.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from qkms.audit import anchors
from qkms.audit.chain import AuditChain
from qkms.audit.encoding import cid_str, decode, is_entry, section
from qkms.audit.store import CHECKPOINTS, MAGIC, iter_log
from qkms.audit.verify import verify_folder
from qkms.crypto import verify_signature
from tests.audit.helpers import AuditKey, filled, make_entry, segment_records, write_segment
from tests.support.server_process import free_port


class FaultyProxy:
    """Forwards to a kubo node; fails the next `fail_next` block puts; counts them."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_next = 0
        self.puts = 0
        self.runner: web.AppRunner | None = None

    async def forward(self, request: web.Request) -> web.Response:
        if request.path.endswith("/block/put"):
            if self.fail_next:
                self.fail_next -= 1
                return web.json_response({"Message": "node busy"}, status=500)
            self.puts += 1
        async with aiohttp.ClientSession() as session, session.post(
                self.upstream + request.path_qs, data=await request.read(),
                headers={"Content-Type": request.headers.get("Content-Type", "")}) as reply:
            return web.Response(body=await reply.read(), status=reply.status,
                                content_type="application/json")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def proxy(make_kubo):
    node = make_kubo()
    faulty = FaultyProxy(node.endpoint)
    faulty.endpoint = await faulty.start()
    faulty.node = node
    yield faulty
    await faulty.stop()


async def caught_up(chain: AuditChain, seconds: float = 30) -> dict:
    for _ in range(int(seconds / 0.05)):
        status = chain._pusher.status()
        if status["lag_entries"] == 0 and status["pushed_seq"] == chain.size:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"push lag never reached 0: {chain._pusher.status()}")


def all_cids(folder) -> set[str]:
    return {cid_str(r.cid) for r in iter_log(folder)}


async def test_every_block_reaches_the_node_with_our_cid(tmp_path, make_kubo):
    node = make_kubo()
    key = AuditKey()
    async with AuditChain(tmp_path, signer=key, checkpoint_every=10,
                          ipfs_endpoint=node.endpoint) as chain:
        for i in range(35):
            await chain.append(make_entry(i))
        status = await caught_up(chain)
        assert status["errors"] == 0 and status["lag_seconds"] == 0
        assert (await chain.health())["ipfs"]["endpoint"] == node.endpoint
    cids = all_cids(tmp_path)
    assert len(cids) == 35 + 4  # checkpoints at 10, 20, 30 and at close (35)
    assert all(map(node.holds, cids))
    # The node holds exactly our bytes: block/get gives back each block.
    async with aiohttp.ClientSession() as session:
        for record in iter_log(tmp_path):
            async with session.post(f"{node.endpoint}/api/v0/block/get",
                                    params={"arg": cid_str(record.cid)}) as reply:
                assert await reply.read() == record.block
    # Each checkpoint is anchored, in order.
    found = anchors.read_ipfs(node.endpoint, key.public)
    assert [a.size for a in found] == [10, 20, 30, 35]


async def test_failures_are_retried_and_the_lag_is_exposed(tmp_path, proxy):
    proxy.fail_next = 3
    async with AuditChain(tmp_path, ipfs_endpoint=proxy.endpoint) as chain:
        chain._pusher.max_backoff = 0.2
        for i in range(10):
            await chain.append(make_entry(i))
        status = await caught_up(chain)
    assert status["errors"] >= 1 and "HTTP 500" in status["last_error"]
    assert all(map(proxy.node.holds, all_cids(tmp_path)))


async def test_a_node_that_is_down_never_blocks_appends_and_is_caught_up(tmp_path, make_kubo):
    node = make_kubo(start=False)
    async with AuditChain(tmp_path, ipfs_endpoint=node.endpoint) as chain:
        chain._pusher.max_backoff = 0.2
        for i in range(20):
            await asyncio.wait_for(chain.append(make_entry(i)), timeout=2)
        await asyncio.sleep(0.3)
        status = chain._pusher.status()
        assert status["lag_entries"] == 20 and status["lag_seconds"] > 0
        await asyncio.to_thread(node.start)
        await caught_up(chain)
    assert all(map(node.holds, all_cids(tmp_path)))


async def test_the_cursor_survives_a_restart(tmp_path, proxy):
    async with AuditChain(tmp_path, ipfs_endpoint=proxy.endpoint) as chain:
        for i in range(10):
            await chain.append(make_entry(i))
        await caught_up(chain)
    puts = proxy.puts
    async with AuditChain(tmp_path, ipfs_endpoint=proxy.endpoint) as chain:
        await chain.append(make_entry(10))
        await caught_up(chain)
    assert proxy.puts == puts + 1


# -- anchored verification: the attacks a writer of the audit folder can make ------------

def qkms_verify(folder: Path, *anchor: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "qkms", "audit", "verify", "--data-dir", str(folder)]
    for source in anchor:
        args += ["--anchor", source]
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
async def anchored(tmp_path, make_kubo):
    """30 entries, a checkpoint every 10, all pushed and anchored on a real node."""
    node = make_kubo()
    folder = tmp_path / "audit"
    async with AuditChain(folder, signer=AuditKey(), checkpoint_every=10,
                          ipfs_endpoint=node.endpoint) as chain:
        for i in range(30):
            await chain.append(make_entry(i))
        await caught_up(chain)
    return folder, node


def cut_back_to(folder: Path, size: int) -> None:
    """Truncate the log and the checkpoint file to the checkpoint at `size`, consistently."""
    records = segment_records(folder)
    cut = next(i for i, r in enumerate(records)
               if not is_entry(r.block) and decode(r.block)["size"] == size)
    write_segment(folder, records[:cut + 1])
    kept = [r for r in records[:cut + 1] if not is_entry(r.block)]
    (folder / CHECKPOINTS).write_bytes(MAGIC + b"".join(section(r.cid, r.block) for r in kept))


async def test_truncation_to_an_earlier_checkpoint_is_caught_by_the_anchor(anchored):
    folder, node = anchored
    cut_back_to(folder, 20)
    # The attack: every signature still holds.
    attack = verify_folder(folder, check=verify_signature)
    assert attack.ok and attack.last_seq == 20
    plain = qkms_verify(folder)
    assert plain.returncode == 0, plain.stderr
    caught = qkms_verify(folder, f"ipfs:{node.endpoint}")
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert "truncated" in caught.stdout and "the log ends at 20" in caught.stdout


async def test_a_log_resigned_under_a_fresh_key_is_unanchored(anchored, tmp_path):
    folder, node = anchored
    forged = tmp_path / "forged"
    await filled(forged, 30, signer=AuditKey("intruder"), checkpoint_every=10)
    shutil.rmtree(folder)
    shutil.copytree(forged, folder)
    # Trust on first use accepts the intruder's key.
    assert verify_folder(folder, check=verify_signature).ok
    plain = qkms_verify(folder)
    assert plain.returncode == 0 and "checkpoint key is NOT pinned" in plain.stderr  # loudly
    caught = qkms_verify(folder, f"ipfs:{node.endpoint}")
    assert caught.returncode == 1 and "unanchored" in caught.stdout, caught.stdout
    pin = tmp_path / "audit.pub"
    pin.write_text(base64.b64encode(AuditKey().public).decode())
    pinned = subprocess.run([sys.executable, "-m", "qkms", "audit", "verify", "--data-dir",
                             str(folder), "--public-key", str(pin)], capture_output=True,
                            text=True, check=False, timeout=120)
    assert pinned.returncode == 1 and "key-changed" in pinned.stdout, pinned.stdout
    assert "NOT pinned" not in pinned.stderr


async def test_a_file_of_anchors_catches_a_fork(anchored, tmp_path):
    folder, node = anchored
    key = AuditKey().public
    good = anchors.read_ipfs(node.endpoint, key)
    copy = tmp_path / "anchors.txt"
    copy.write_text("# exported anchors\n" + "".join(a.line() for a in good))
    assert qkms_verify(folder, f"file:{copy}").returncode == 0
    other = await filled(tmp_path / "other", 10, signer=AuditKey(), checkpoint_every=10)
    assert other.size == 10
    alien = next(r for r in iter_log(tmp_path / "other") if not is_entry(r.block))
    copy.write_text(f"10 {cid_str(alien.cid)}\n")
    forked = qkms_verify(folder, f"file:{copy}")
    assert forked.returncode == 1 and "forked" in forked.stdout, forked.stdout
    copy.write_text("ten bafy\n")
    bad = qkms_verify(folder, f"file:{copy}")
    assert bad.returncode == 2 and "--anchor" in bad.stderr and "line 1" in bad.stderr

"""AuditChain: appends, order, checkpoints, restart, torn writes and storage failures."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from qkms.audit import chain as chain_module
from qkms.audit.chain import AuditChain
from qkms.audit.encoding import cid_raw, cid_str, decode, entry_prefix, is_entry, section
from qkms.audit.store import MAGIC, segment_paths
from qkms.audit.verify import verify_folder
from qkms.crypto import verify_signature
from qkms.errors import AuditStorageError
from tests.audit.helpers import AuditKey, filled, make_entry, segment_records


async def test_append_returns_sequence_and_the_cid_of_the_stored_block(tmp_path):
    async with AuditChain(tmp_path) as chain:
        first = await chain.append(make_entry(0))
        second = await chain.append(make_entry(1))
    assert (first.sequence, second.sequence) == (1, 2)
    records = segment_records(tmp_path)
    assert [cid_str(r.cid) for r in records] == [first.cid, second.cid]
    assert cid_str(cid_raw(records[1].block)) == second.cid
    assert entry_prefix(records[1].block) == (2, records[0].cid)
    assert decode(records[0].block)["prev"] is None


@pytest.mark.parametrize("sync", ["fsync", "write"])
async def test_concurrent_appends_never_fork_and_listeners_see_chain_order(tmp_path, sync):
    seen: list[int] = []

    async def slow_listener(entry):
        await asyncio.sleep(random.random() / 1000)
        seen.append(entry.sequence)

    async with AuditChain(tmp_path, sync=sync, signer=AuditKey(), checkpoint_every=50) as chain:
        chain.listen(slow_listener)
        stored = await asyncio.gather(*(chain.append(make_entry(i)) for i in range(300)))
    assert sorted(e.sequence for e in stored) == list(range(1, 301))
    assert seen == list(range(1, 301))
    result = verify_folder(tmp_path, check=verify_signature)
    assert result.ok and result.entries == 300 and result.checkpoints == 6


async def test_a_failing_listener_does_not_break_the_trail(tmp_path):
    def boom(entry):
        raise RuntimeError("listener bug")

    async with AuditChain(tmp_path) as chain:
        chain.listen(boom)
        assert (await chain.append(make_entry())).sequence == 1


async def test_checkpoint_every_n_entries(tmp_path):
    key = AuditKey()
    async with AuditChain(tmp_path, signer=key, checkpoint_every=4) as chain:
        for i in range(10):
            await chain.append(make_entry(i))
        assert chain.last_checkpoint.size == 8
    assert chain.last_checkpoint.size == 10  # close signs the tail
    assert key.calls == 3
    sizes = [decode(r.block)["size"] for r in segment_records(tmp_path) if not is_entry(r.block)]
    assert sizes == [4, 8, 10]


async def test_checkpoint_after_t_seconds(tmp_path):
    async with AuditChain(tmp_path, signer=AuditKey(), checkpoint_interval=0.1) as chain:
        await chain.append(make_entry())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if chain.last_checkpoint is not None:
                break
        assert chain.last_checkpoint is not None and chain.last_checkpoint.size == 1


async def test_signer_failure_keeps_entries_and_degrades_health(tmp_path):
    good = AuditKey()
    state = {"fail": True}

    async def flaky(data):
        if state["fail"]:
            raise ConnectionError("key engine unavailable")
        return await good(data)

    async with AuditChain(tmp_path, signer=flaky, checkpoint_every=2) as chain:
        for i in range(3):
            await chain.append(make_entry(i))
        health = await chain.health()
        assert health["status"] == "degraded" and "key engine unavailable" in health["error"]
        assert chain.stats["checkpoint_failures"] == 1
        state["fail"] = False
        assert (await chain.checkpoint()).size == 3
        assert (await chain.health())["status"] == "healthy"
    assert verify_folder(tmp_path, check=verify_signature).ok


async def test_a_signer_that_audits_is_refused_not_deadlocked(tmp_path):
    chain = AuditChain(tmp_path, checkpoint_every=1)

    async def auditing_signer(data):
        await chain.append(make_entry(99))  # would wait for the lock it is called under
        raise AssertionError("unreachable")

    chain._signer = auditing_signer
    async with chain:
        await asyncio.wait_for(chain.append(make_entry()), timeout=5)
        assert "must not write audit entries" in chain.last_error


async def test_a_signature_that_does_not_verify_is_not_written(tmp_path):
    key = AuditKey()

    async def wrong(data):
        signature, key_id, public = await key(data + b"x")
        return signature, key_id, public

    async with AuditChain(tmp_path, signer=wrong, check=verify_signature,
                          checkpoint_every=1) as chain:
        await chain.append(make_entry())
        assert chain.last_checkpoint is None and chain.stats["checkpoint_failures"] == 1


async def test_restart_resumes_the_chain(tmp_path):
    await filled(tmp_path, 5, signer=AuditKey(), checkpoint_every=3)
    async with AuditChain(tmp_path, signer=AuditKey(), checkpoint_every=3) as chain:
        assert chain.size == 5 and chain.last_checkpoint.size == 5
        assert [e.sequence for e in chain.recent(3)] == [3, 4, 5]
        assert chain.recent(1)[0].cid == chain.head
        sixth = await chain.append(make_entry(5))
    assert sixth.sequence == 6
    assert verify_folder(tmp_path, check=verify_signature).ok


async def test_one_writer_per_folder(tmp_path):
    async with AuditChain(tmp_path):
        with pytest.raises(AuditStorageError, match="in use by another writer in this process"):
            await AuditChain(tmp_path).open()


async def test_a_writer_in_another_process_is_named_by_its_pid(tmp_path):
    """The refusal names the real holder: the pid of the process holding the folder."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import asyncio, sys\n"
        "from qkms.audit.chain import AuditChain\n"
        "async def main():\n"
        f"    async with AuditChain({str(tmp_path)!r}):\n"
        "        print('open', flush=True); sys.stdin.readline()\n"
        "asyncio.run(main())\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(AuditStorageError, match=f"in use by process {holder.pid}$"):
            await AuditChain(tmp_path).open()
    finally:
        holder.communicate("\n", timeout=30)


async def test_services_over_one_data_dir_in_one_process_share_the_writer(make_service):
    """Two services of one process over one data directory (a script with two providers,
    a test building two) share the audit writer: both audited, one chain."""
    first, second = make_service(), make_service()
    assert second.audit is first.audit
    await first.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="one")
    await second.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="two")
    await first.close()
    made = await second.create_key(usage="SIGNING", algorithm="Ed25519", owner="o", name="three")
    await second.close()
    assert made.name == "three"
    result = verify_folder(first.audit.root, check=verify_signature)
    assert result.ok
    names = [e.key_name for e in first.audit.recent() if e.operation == "CREATE"]
    assert names[-3:] == ["one", "two", "three"]


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02garbage", b"\xff" * 7, "half"])
async def test_torn_write_is_cut_on_start_and_the_chain_resumes(tmp_path, garbage):
    await filled(tmp_path, 5)
    path = segment_paths(tmp_path)[-1][1]
    if garbage == "half":
        block = b"\xa1\x61a\x01"
        garbage = section(cid_raw(block), block)[:-2]
    with open(path, "ab") as handle:
        handle.write(garbage)
    result = verify_folder(tmp_path, check=verify_signature)
    assert result.ok and "torn write" in result.warnings[0]
    async with AuditChain(tmp_path) as chain:
        assert chain.size == 5 and chain.torn_bytes == len(garbage)
        assert (await chain.append(make_entry(5))).sequence == 6
    verified = verify_folder(tmp_path, check=verify_signature)
    assert verified.ok and not verified.warnings
    kept = list((tmp_path / "torn").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == garbage


async def test_damage_before_the_tail_refuses_to_open(tmp_path):
    await filled(tmp_path, 5)
    path = segment_paths(tmp_path)[-1][1]
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 60] ^= 0xFF  # inside the first block
    path.write_bytes(bytes(data))
    with pytest.raises(AuditStorageError, match="damaged"):
        await AuditChain(tmp_path).open()
    finding = verify_folder(tmp_path, check=verify_signature).finding
    assert (finding.kind, finding.seq) == ("edited", 1)


async def test_a_log_shorter_than_its_checkpoints_refuses_to_open(tmp_path):
    await filled(tmp_path, 6, signer=AuditKey(), checkpoint_every=3)
    path = segment_paths(tmp_path)[-1][1]
    records = segment_records(tmp_path)
    path.write_bytes(path.read_bytes()[:records[3].offset])
    with pytest.raises(AuditStorageError, match="truncated"):
        await AuditChain(tmp_path).open()


async def test_a_failed_write_refuses_the_entry_and_keeps_the_chain_whole(tmp_path, monkeypatch):
    async with AuditChain(tmp_path, sync="write") as chain:
        await chain.append(make_entry(0))
        real_write = os.write

        def failing(fd, data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", failing)
        with pytest.raises(AuditStorageError, match="No space left"):
            await chain.append(make_entry(1))
        monkeypatch.setattr(os, "write", real_write)
        assert (await chain.append(make_entry(2))).sequence == 2
    assert verify_folder(tmp_path, check=verify_signature).entries == 2


async def test_a_failed_group_write_refuses_its_entries_and_keeps_the_chain_whole(
        tmp_path, monkeypatch):
    """fsync mode: the committer writes entries with the group's fsync; a refused write
    refuses them (and what was chained after them) and the chain takes the next append."""
    async with AuditChain(tmp_path) as chain:
        await chain.append(make_entry(0))
        real_write = os.write

        def failing(fd, data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", failing)
        results = await asyncio.gather(chain.append(make_entry(1)), chain.append(make_entry(2)),
                                       return_exceptions=True)
        assert all(isinstance(r, AuditStorageError) for r in results), results
        assert (await chain.health())["status"] != "healthy"
        monkeypatch.setattr(os, "write", real_write)
        assert (await chain.append(make_entry(3))).sequence == 2
        assert [e.sequence for e in chain.recent()] == [1, 2]
    assert verify_folder(tmp_path, check=verify_signature).entries == 2


async def test_a_failed_fsync_breaks_the_chain_until_reopened(tmp_path, monkeypatch):
    chain = AuditChain(tmp_path)
    await chain.open()
    await chain.append(make_entry(0))

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(AuditStorageError, match="fsync failed"):
        await chain.append(make_entry(1))
    with pytest.raises(AuditStorageError):
        await chain.append(make_entry(2))
    assert (await chain.health())["status"] == "unhealthy"
    monkeypatch.undo()
    await chain.close()
    async with AuditChain(tmp_path) as again:
        assert (await again.append(make_entry(3))).sequence == 3  # entry 2 was written first


async def test_segments_roll_at_checkpoints_and_each_starts_anchored(tmp_path):
    await filled(tmp_path, 40, signer=AuditKey(), checkpoint_every=5, segment_bytes=3000)
    paths = segment_paths(tmp_path)
    assert len(paths) > 3
    for number, _ in paths[1:]:
        first = segment_records(tmp_path, number)[0]
        assert not is_entry(first.block)  # a copy of the checkpoint that closed the last one
    result = verify_folder(tmp_path, check=verify_signature)
    assert result.ok and result.entries == 40
    async with AuditChain(tmp_path, signer=AuditKey(), checkpoint_every=5,
                          segment_bytes=3000) as chain:
        assert chain.size == 40
        await chain.append(make_entry(40))
    assert verify_folder(tmp_path, check=verify_signature).entries == 41


async def test_snapshot_and_health(tmp_path):
    async with AuditChain(tmp_path, signer=AuditKey(), checkpoint_every=2) as chain:
        for i in range(3):
            await chain.append(make_entry(i, result="denied" if i == 1 else "success"))
        snap = chain.snapshot(limit=2)
        health = await chain.health()
    assert snap["entries"] == 3 and snap["unsigned_entries"] == 1
    assert snap["by_result"] == {"success": 2, "denied": 1}
    assert [e["sequence"] for e in snap["recent"]] == [2, 3]
    assert snap["checkpoint"]["size"] == 2
    assert health["status"] == "healthy" and health["entries"] == 3


def test_sync_modes():  # the variables: tests/test_config.py (Settings.audit)
    with pytest.raises(ValueError):
        AuditChain("/tmp/x", sync="sometimes")
    assert chain_module.SYNC_MODES == ("fsync", "write")

"""Optional push of every audit block to an IPFS node (kubo RPC API), with retries.

The embedded store stays the record of truth: an append never waits for the
node.  The pusher follows the log on disk from a cursor kept in
``ipfs.cursor``, so a restart resumes where it stopped and a node that is
down for hours is caught up later.  Each block is sent with
``POST /api/v0/block/put?cid-codec=dag-cbor&mhtype=sha2-256`` and the CID
the node answers must equal ours, which checks the node stored exactly our
bytes.  After a checkpoint's block, its ``<size> <CID>`` is appended to the node's anchor
file for the checkpoint key (see anchors.py), which ``qkms audit verify --anchor``
checks.  ``status()`` exposes the push lag in entries and seconds.

Configured by ``QKMS_IPFS_API`` or the KeyPolicy's ``auditPolicy.ipfsEndpoint``
(for example ``http://ipfs.ipfs:5001``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import anchors
from .checkpoint import parse_checkpoint
from .encoding import cid_str, entry_prefix, is_entry
from .store import MAGIC, Record, read_from, segment_paths

log = logging.getLogger("key-management:audit")

PUT_PATH = "/api/v0/block/put"
PUT_QUERY = {"cid-codec": "dag-cbor", "mhtype": "sha2-256"}


class IpfsPusher:
    def __init__(self, root: Path, endpoint: str, *, head: Callable[[], int],
                 concurrency: int = 8, timeout: float = 10.0, max_backoff: float = 30.0) -> None:
        self.root = root
        self.endpoint = endpoint.rstrip("/")
        self._head = head
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._cursor_path = root / "ipfs.cursor"
        self.segment, self.offset, self.pushed_seq, self.pushed_blocks = 0, 0, 0, 0
        self.errors = 0
        self.last_error: str | None = None
        self._behind_since: float | None = None
        self._load_cursor()

    def _load_cursor(self) -> None:
        try:
            data = json.loads(self._cursor_path.read_text())
        except (OSError, ValueError):
            return
        if data.get("endpoint") == self.endpoint:
            self.segment, self.offset = int(data["segment"]), int(data["offset"])
            self.pushed_seq = int(data.get("seq", 0))

    def _save_cursor(self) -> None:
        temp = self._cursor_path.with_suffix(".tmp")
        temp.write_text(json.dumps({"endpoint": self.endpoint, "segment": self.segment,
                                    "offset": self.offset, "seq": self.pushed_seq}))
        temp.replace(self._cursor_path)

    def wake(self) -> None:
        """The chain appended: note since when the node is behind, and push."""
        if self._behind_since is None:
            self._behind_since = time.monotonic()
        self._wake.set()

    async def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until everything written so far is pushed."""
        self._idle.clear()
        self.wake()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            log.warning("audit: IPFS push still %d entries behind at shutdown",
                        self.status()["lag_entries"])
            return False

    def status(self) -> dict[str, Any]:
        lag = max(0, self._head() - self.pushed_seq)
        if lag == 0:
            self._behind_since = None
        since = self._behind_since
        return {"endpoint": self.endpoint, "pushed_seq": self.pushed_seq, "lag_entries": lag,
                "lag_seconds": round(time.monotonic() - since, 3) if since else 0.0,
                "pushed_blocks": self.pushed_blocks, "errors": self.errors,
                "last_error": self.last_error}

    def _pending(self) -> list[Record]:
        """Records after the cursor, moving to the next segment at the end of one."""
        paths = [n for n, _ in segment_paths(self.root)]
        if not paths:
            return []
        if self.segment not in paths:  # first run, or the segment was pruned
            later = [n for n in paths if n > self.segment]
            self.segment, self.offset = (later or paths)[0], len(MAGIC)
        records = read_from(self.root, self.segment, max(self.offset, len(MAGIC)))
        if not records and self.segment != paths[-1]:
            self.segment = next(n for n in paths if n > self.segment)
            self.offset = len(MAGIC)
            return read_from(self.root, self.segment, self.offset)
        return records

    async def run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            backoff = 0.5
            while True:
                self.status()
                records = await asyncio.to_thread(self._pending)
                if not records:
                    self._idle.set()
                    self._wake.clear()
                    try:  # asyncio.timeout, not wait_for: wait_for can swallow a cancel
                        async with asyncio.timeout(1.0):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                for start in range(0, len(records), self.concurrency * 4):
                    batch = records[start:start + self.concurrency * 4]
                    while not await self._push_batch(session, batch):
                        await asyncio.sleep(backoff)
                        backoff = min(self.max_backoff, backoff * 2)
                    backoff = 0.5
                    self._advance(batch)
                if self.pushed_seq >= self._head():
                    self._behind_since = None

    def _advance(self, batch: list[Record]) -> None:
        for record in batch:
            if is_entry(record.block):
                self.pushed_seq = entry_prefix(record.block)[0]
        self.pushed_blocks += len(batch)
        self.offset = batch[-1].end
        self._save_cursor()

    async def _push_batch(self, session: Any, batch: list[Record]) -> bool:
        limit = asyncio.Semaphore(self.concurrency)

        async def one(record: Record) -> None:
            async with limit:
                await self.put(session, record.cid, record.block)

        results = await asyncio.gather(*(one(r) for r in batch), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if not failures:  # each checkpoint is anchored once its block is on the node
            try:
                for record in batch:
                    if not is_entry(record.block):
                        await self.anchor(session, record)
            except (OSError, ValueError) as exc:
                failures.append(exc)
        if failures:
            self.errors += len(failures)
            self.last_error = f"{type(failures[0]).__name__}: {failures[0]}"
            log.warning("audit: IPFS push to %s failed (%d blocks): %s", self.endpoint,
                        len(failures), self.last_error)
            return False
        return True

    async def anchor(self, session: Any, record: Record) -> None:
        """Append the checkpoint's ``<size> <CID>`` to the node's anchor file (anchors.py)."""
        checkpoint = parse_checkpoint(record.cid, record.block)
        await anchors.publish(session, self.endpoint, checkpoint.public_key,
                              anchors.Anchor(checkpoint.size, checkpoint.cid_text))

    async def put(self, session: Any, cid: bytes, block: bytes) -> None:
        """Store one block on the node; raise unless it answers with our CID."""
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("file", block, filename="block", content_type="application/octet-stream")
        async with session.post(self.endpoint + PUT_PATH, params=PUT_QUERY, data=form) as reply:
            if reply.status != 200:
                raise OSError(f"HTTP {reply.status}: {(await reply.text())[:200]}")
            answer = await reply.json(content_type=None)
        expected = cid_str(cid)
        if answer.get("Key") != expected:
            raise ValueError(f"node stored {answer.get('Key')}, expected {expected}")

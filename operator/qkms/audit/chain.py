"""``AuditChain``: the durable, hash-chained ``AuditSink`` the service writes to.

Each entry becomes a DAG-CBOR block whose ``prev`` links to the entry before;
its CID is returned to the caller.  Appends are serialized by one asyncio lock
and the encode-and-write inside it never awaits, so concurrent operations get
consecutive sequence numbers and the chain never forks.  Durability follows
``sync`` (see ``store`` for the policy): with ``"fsync"`` an append returns
only after an fsync covering its entry, shared by every append waiting at the
time (group commit).  In that mode the entries themselves are written by the
committer too, together, just before that fsync and in the same thread hop: a
write to the page an fsync is flushing waits for the disk, so the event loop never
writes (a checkpoint writes what is pending first, so order on disk is chain order;
a refused write refuses its entries and every one chained after them, and the chain
goes back to the last entry written).  Listeners (the service's ``auditEvent``) run
in chain order, before the append returns, from one committer task.

Every ``checkpoint_every`` entries or ``checkpoint_interval`` seconds,
whichever comes first, the injected ``signer`` signs a checkpoint of the
chain.  The signer is awaited while the lock is held, so a checkpoint
directly follows its head in the log; it must therefore not write audit
entries itself (that is refused rather than left to deadlock).  A failing
signer does not refuse operations: the entries are stored, the failure is
counted, health turns degraded and the next trigger retries; so does a
checkpoint the disk refuses to take (nothing of it is left in the log).

An append that cannot be stored raises ``AuditStorageError``; failing closed
or open is the caller's policy.  After a failed fsync the chain refuses all
further appends until it is reopened (the kernel may have dropped the data).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qkms.errors import AuditStorageError

from .checkpoint import (
    ALGORITHM,
    Checkpoint,
    SignatureCheck,
    Signer,
    parse_checkpoint,
    signature_valid,
)
from .encoding import checkpoint_body as make_body
from .encoding import (
    cid_raw,
    cid_str,
    decode,
    encode_checkpoint,
    encode_entry,
    entry_from_value,
    entry_prefix,
    is_entry,
    section,
)
from .entry import AuditEntry
from .store import Recovered, SegmentLog

log = logging.getLogger("key-management:audit")

Listener = Callable[[AuditEntry], Awaitable[None] | None]
SYNC_MODES = ("fsync", "write")
_in_signer: contextvars.ContextVar[bool] = contextvars.ContextVar("qkms_audit_signer",
                                                                  default=False)


class AuditChain:
    """Hash-chained audit log under ``folder`` (``$QKMS_DATA_DIR/audit``).  Its options
    are plain arguments: the service passes ``Settings.audit`` (``qkms.config``)."""

    def __init__(
        self,
        folder: Path | str,
        *,
        signer: Signer | None = None,
        check: SignatureCheck | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        sync: str = "fsync",
        fsync_interval: float = 1.0,
        segment_bytes: int = 64 << 20,
        recent_capacity: int = 1000,
        ipfs_endpoint: str | None = None,
        signer_timeout: float = 10.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        self.root = Path(folder)
        self.sync = sync
        self.fsync_interval = fsync_interval
        self.checkpoint_every = max(1, checkpoint_every)
        self.checkpoint_interval = checkpoint_interval
        self.signer_timeout = signer_timeout
        self.drain_timeout = 5.0  # how long close() lets the IPFS push catch up
        self._signer = signer
        self._check = check  # verifies each checkpoint just signed: a signer gone wrong
        self._clock = clock or (lambda: datetime.now(UTC))
        self._log = SegmentLog(self.root, segment_bytes)
        self._recent: deque[AuditEntry] = deque(maxlen=recent_capacity)
        self._listeners: list[Listener] = []
        self._owner: Listener | None = None  # the owning service's listener (see attach)
        self._lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._opened = False
        self._closed = False
        self._users = 1
        self._broken: str | None = None
        self._size = 0
        self._head: bytes | None = None
        self._checkpoint: Checkpoint | None = None
        self._checkpoint_at = time.monotonic()
        self._retry_at = 0.0
        self._queue: list[tuple[AuditEntry, asyncio.Future[AuditEntry]]] = []
        # ``fsync`` mode: encoded entries (seq, the head before it, bytes) not yet written;
        # the committer writes them and fsyncs in one thread hop, off the event loop
        self._pending: list[tuple[int, bytes | None, bytes]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_sync = time.monotonic()
        self.stats: Counter[str] = Counter()
        self.last_error: str | None = None
        self._refusing = False  # the last append could not be written (disk full, say)
        self.torn_bytes = 0
        self._pusher: Any = None
        if ipfs_endpoint:
            from .ipfs import IpfsPusher

            self._pusher = IpfsPusher(self.root, ipfs_endpoint, head=lambda: self._size)

    # -- lifecycle ---------------------------------------------------------------------
    def share(self) -> AuditChain:
        """One more user of this open chain (see :func:`shared_chain`): the last
        ``close`` closes it."""
        self._users += 1
        return self

    @property
    def users(self) -> int:
        return self._users

    async def open(self) -> AuditChain:
        """Open the folder, cut a torn tail, resume from the last complete entry."""
        async with self._open_lock:
            if self._opened:
                return self
            if self._closed:
                raise AuditStorageError("audit chain is closed")
            recovered = await asyncio.to_thread(self._log.open)
            try:
                await asyncio.to_thread(self._resume, recovered)
            except BaseException:
                self._log.close()
                raise
            self._tasks = [asyncio.create_task(self._commit_loop(), name="audit-commit"),
                           asyncio.create_task(self._tick_loop(), name="audit-tick")]
            if self._pusher is not None:
                self._tasks.append(asyncio.create_task(self._pusher.run(), name="audit-ipfs"))
            self._opened = True
        return self

    def _resume(self, recovered: Recovered) -> None:
        self.torn_bytes = recovered.torn_bytes
        last_in_log: Checkpoint | None = None
        entries = []
        for record in recovered.tail:
            if is_entry(record.block):
                self._size, _ = entry_prefix(record.block)
                self._head = record.cid
                entries.append(record)
            else:
                last_in_log = parse_checkpoint(record.cid, record.block)
                if last_in_log.size >= self._size:
                    self._size, self._head = last_in_log.size, last_in_log.head
        filed = (parse_checkpoint(recovered.checkpoints[-1].cid, recovered.checkpoints[-1].block)
                 if recovered.checkpoints else None)
        if last_in_log is not None and (filed is None or filed.size < last_in_log.size):
            self._log.record_checkpoint(section(last_in_log.cid, _block_of(recovered,
                                                                            last_in_log.cid)))
            filed = last_in_log
        if filed is not None and filed.size > self._size:
            raise AuditStorageError(
                f"audit log ends at entry {self._size} but checkpoint {filed.cid_text} covers "
                f"{filed.size}: the log was truncated; run `qkms audit verify`")
        self._checkpoint = filed
        for record in entries[-self._recent.maxlen:] if self._recent.maxlen else []:
            self._recent.append(entry_from_value(decode(record.block), cid_str(record.cid)))

    async def close(self) -> None:
        """Sign a last checkpoint (if any entry is unsigned), flush and release the folder;
        a shared chain only once its last user closes it."""
        self._users -= 1
        if self._users > 0:
            return
        if not self._opened or self._closed:
            self._closed = True
            return
        async with self._lock:
            if self._broken is None and self._signer is not None:
                await self._checkpoint_locked()
            self._closed = True
        while self._queue:
            await asyncio.sleep(0)
        if self._pusher is not None:
            await self._pusher.drain(self.drain_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._sync_lock:
            await asyncio.to_thread(self._log.close)

    async def __aenter__(self) -> AuditChain:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def attach(self, signer: Signer | None, listener: Listener) -> None:
        """Hand the chain to a new owner (a service rebuilt after a policy change): its
        signer and its listener replace the old ones; the open log carries on."""
        self._signer = signer
        if self._owner in self._listeners:
            self._listeners.remove(self._owner)
        self._owner = listener
        self._listeners.insert(0, listener)

    def listen(self, listener: Listener) -> None:
        """Call ``listener(entry)`` for every stored entry, in chain order."""
        self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- appending -----------------------------------------------------------------------
    async def append(self, entry: AuditEntry) -> AuditEntry:
        """Store ``entry``; return it with its sequence number and CID."""
        waiters, stored = await self._chain([entry])
        return await waiters[0] if waiters else stored[0]

    async def append_many(self, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Store ``entries`` in order, one after another in the chain, under one turn of
        the lock and in one group commit (a batch's items); return them stored.  An entry
        that cannot be encoded refuses it and those after it, as ``append`` would."""
        waiters, stored = await self._chain(entries)
        if not waiters:
            return stored
        return list(await asyncio.gather(*waiters))  # every outcome retrieved, the first raised

    async def _chain(self, entries: list[AuditEntry]
                     ) -> tuple[list[asyncio.Future[AuditEntry]], list[AuditEntry]]:
        """Chain ``entries`` under the lock; what to await (fsync) and what was stored."""
        if not self._opened:
            await self.open()
        if _in_signer.get():
            raise AuditStorageError("the checkpoint signer must not write audit entries")
        waiters: list[asyncio.Future[AuditEntry]] = []
        stored: list[AuditEntry] = []
        async with self._lock:
            if self._broken is not None or self._closed:
                raise AuditStorageError(self._broken or "audit chain is closed")
            try:
                for entry in entries:
                    stored.append(self._append_locked(entry))
            finally:
                if (self._signer is not None
                        and self._size - self._signed_size >= self.checkpoint_every
                        and time.monotonic() >= self._retry_at):
                    await self._checkpoint_locked()
                if self.sync == "fsync":  # acknowledged once the group's fsync is done
                    loop = asyncio.get_running_loop()
                    for one in stored:
                        waiter = loop.create_future()
                        self._queue.append((one, waiter))
                        waiters.append(waiter)
                    self._wake.set()
                else:  # written already: delivered here, in chain order (the lock held)
                    for one in stored:
                        await self._deliver(one)
        if self._pusher is not None:
            self._pusher.wake()
        return waiters, stored

    def _append_locked(self, entry: AuditEntry) -> AuditEntry:
        """Chain one entry (the lock held): encoded, then pending (fsync: written with
        the group's fsync, in chain order) or written now."""
        seq = self._size + 1
        try:
            block = encode_entry(entry, seq, self._head)
        except (TypeError, ValueError, UnicodeError) as exc:
            self.stats["failures"] += 1
            raise AuditStorageError(f"entry cannot be encoded: {exc}") from exc
        raw = cid_raw(block)
        if self.sync == "fsync":
            self._pending.append((seq, self._head, section(raw, block)))
        else:
            try:
                self._log.append(section(raw, block))
            except OSError as exc:
                self.stats["failures"] += 1
                self.last_error = f"write failed: {exc.strerror or exc}"
                self._refusing = True
                log.error("audit: %s", self.last_error)
                raise AuditStorageError(self.last_error) from exc
            self._refusing = False
        self._size, self._head = seq, raw
        stored = entry.stored(seq, cid_str(raw))
        self._recent.append(stored)
        self.stats["appended"] += 1
        return stored

    async def _commit_loop(self) -> None:
        """Make queued entries durable (one fsync per batch), then deliver them in order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if self.sync == "fsync":
                    async with self._sync_lock:
                        # taken under the lock: a checkpoint writes what is pending first
                        batch, self._queue = self._queue, []
                        pending, self._pending = self._pending, []
                        failed = await asyncio.to_thread(self._write_and_sync, pending)
                        if failed is not None and failed[0] == "write":
                            self._unwind(pending, batch, failed[1])
                            continue
                    if failed is not None:
                        self._fail(batch, f"fsync failed: {failed[1].strerror or failed[1]}")
                        continue
                    self._last_sync = time.monotonic()
                else:
                    batch, self._queue = self._queue, []
                for stored, waiter in batch:
                    await self._deliver(stored)
                    if not waiter.done():
                        waiter.set_result(stored)

    def _write_and_sync(self, pending: list[tuple[int, bytes | None, bytes]]
                        ) -> tuple[str, OSError] | None:
        """(In a thread) write the pending entries, whole or not at all, then fsync."""
        if pending:
            try:
                self._log.append(b"".join(data for _, _, data in pending))
            except OSError as exc:
                return "write", exc
            self._refusing = False
        try:
            self._log.sync()
        except OSError as exc:
            return "fsync", exc
        return None

    def _unwind(self, pending: list[tuple[int, bytes | None, bytes]],
                batch: list[tuple[AuditEntry, asyncio.Future[AuditEntry]]],
                exc: OSError) -> None:
        """Entries that could not be written (disk full, say) are refused, with every entry
        chained after them, and the chain goes back to the last one written: it stays whole
        and takes the next append, as a refused write always did.  Runs without awaiting,
        so no append interleaves."""
        first, head = pending[0][0], pending[0][1]
        self.last_error = f"write failed: {exc.strerror or exc}"
        self._refusing = True
        log.error("audit: %s", self.last_error)
        waiting = batch + self._queue
        refused = [(e, w) for e, w in waiting if (e.sequence or 0) >= first]
        written = [(e, w) for e, w in waiting if (e.sequence or 0) < first]
        self._queue = written  # written by a checkpoint already: delivered next turn
        self._pending = []
        self.stats["failures"] += len(refused)
        self.stats["appended"] -= len(refused)
        self._size, self._head = first - 1, head
        while self._recent and (self._recent[-1].sequence or 0) >= first:
            self._recent.pop()
        for _, waiter in refused:
            if not waiter.done():
                waiter.set_exception(AuditStorageError(self.last_error))
        if written:
            self._wake.set()

    def _fail(self, batch: list[tuple[AuditEntry, asyncio.Future[AuditEntry]]],
              reason: str) -> None:
        self._broken = reason
        self.last_error = reason
        self.stats["failures"] += len(batch) + len(self._queue)
        log.error("audit: %s; refusing appends until reopened", reason)
        for _, waiter in [*batch, *self._queue]:
            if not waiter.done():
                waiter.set_exception(AuditStorageError(reason))
        self._queue = []

    async def _deliver(self, entry: AuditEntry) -> None:
        for listener in list(self._listeners):
            try:
                result = listener(entry)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a listener must not break the trail
                log.exception("audit listener failed")

    # -- checkpoints -----------------------------------------------------------------------
    @property
    def _signed_size(self) -> int:
        return self._checkpoint.size if self._checkpoint is not None else 0

    async def checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint now if any entry is unsigned; return the latest checkpoint."""
        if not self._opened:
            await self.open()
        async with self._lock:
            return await self._checkpoint_locked()

    async def _checkpoint_locked(self) -> Checkpoint | None:
        if self._signer is None or self._head is None or self._size == self._signed_size:
            return self._checkpoint
        now = self._clock()
        previous = self._checkpoint.cid if self._checkpoint is not None else None
        body = make_body(self._size, self._head, now, previous)
        token = _in_signer.set(True)
        try:
            async with asyncio.timeout(self.signer_timeout):
                signature, key_id, public = await self._signer(body)
            draft = Checkpoint(b"", self._size, self._head, now, previous, key_id, ALGORITHM,
                               public, signature, body)
            if self._check is not None and not signature_valid(draft, self._check):
                raise ValueError(f"signature does not verify as {ALGORITHM}")
        except Exception as exc:
            self.stats["checkpoint_failures"] += 1
            self.last_error = f"checkpoint signing failed: {type(exc).__name__}: {exc}"
            self._retry_at = time.monotonic() + min(60.0, 2.0 * self.stats["checkpoint_failures"])
            log.error("audit: %s", self.last_error)
            return None
        finally:
            _in_signer.reset(token)
        block = encode_checkpoint(self._size, self._head, now, previous, signature, key_id,
                                  ALGORITHM, public)
        raw = cid_raw(block)
        record = section(raw, block)
        signed = (self._size, self._head)
        async with self._sync_lock:
            if (self._size, self._head) != signed:  # unwound while signing: try again later
                return None
            pending, self._pending = self._pending, []  # the entries it covers come first
            try:  # whole or not at all (a partial write is cut back): like a refused append
                await asyncio.to_thread(self._log.append,
                                        b"".join(data for _, _, data in pending) + record)
            except OSError as exc:  # disk full: nothing changed, so retry later, unbroken
                if pending:
                    self._unwind(pending, [], exc)
                self.stats["checkpoint_failures"] += 1
                self.last_error = f"checkpoint write failed: {exc.strerror or exc}"
                self._retry_at = time.monotonic() + min(60.0,
                                                        2.0 * self.stats["checkpoint_failures"])
                log.error("audit: %s; will retry", self.last_error)
                return None
            try:
                await asyncio.to_thread(self._log.commit_checkpoint, record)
                if self._log.segment_size >= self._log.segment_bytes:
                    await asyncio.to_thread(self._log.roll, record)
            except OSError as exc:
                self._fail([], f"checkpoint write failed: {exc.strerror or exc}")
                raise AuditStorageError(self._broken or "checkpoint write failed") from exc
        if self._checkpoint is not None and self._checkpoint.public_key != public:
            log.warning("audit: checkpoint key changed to %s; verifiers pinned to the old key "
                        "will report it", key_id)
        self._checkpoint = Checkpoint(raw, self._size, self._head, now, previous, key_id,
                                      ALGORITHM, public, signature, body)
        self._checkpoint_at = time.monotonic()
        self._retry_at = 0.0
        self.stats["checkpoints"] += 1
        if self._pusher is not None:
            self._pusher.wake()
        return self._checkpoint

    async def _tick_loop(self) -> None:
        """Time-based duties: the interval checkpoint and, in ``write`` mode, the fsync."""
        period = max(0.05, min(1.0, self.checkpoint_interval, self.fsync_interval))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if self.sync == "write" and now - self._last_sync >= self.fsync_interval:
                try:
                    async with self._sync_lock:
                        await asyncio.to_thread(self._log.sync)
                    self._last_sync = now
                except OSError as exc:
                    self._fail([], f"fsync failed: {exc.strerror or exc}")
            if (self._signer is not None and self._size > self._signed_size
                    and now - self._checkpoint_at >= self.checkpoint_interval
                    and now >= self._retry_at and self._broken is None):
                async with self._lock:
                    if not self._closed:
                        await self._checkpoint_locked()

    # -- reading -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Sequence number of the newest entry (entries are numbered from 1)."""
        return self._size

    @property
    def head(self) -> str | None:
        return cid_str(self._head) if self._head is not None else None

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        return self._checkpoint

    def recent(self, limit: int = 100) -> list[AuditEntry]:
        return list(self._recent)[-limit:] if limit > 0 else []

    def snapshot(self, limit: int = 100) -> dict[str, Any]:
        """Statistics and recent entries: what ``/audit/keys`` serves."""
        entries = self.recent(limit)
        return {
            "entries": self._size,
            "head": self.head,
            "checkpoint": self._checkpoint.to_dict() if self._checkpoint else None,
            "unsigned_entries": self._size - self._signed_size,
            "sync": self.sync,
            "by_operation": dict(Counter(e.operation for e in self._recent)),
            "by_result": dict(Counter(e.result for e in self._recent)),
            "failures": self.stats["failures"],
            "checkpoint_failures": self.stats["checkpoint_failures"],
            "ipfs": self._pusher.status() if self._pusher is not None else None,
            "recent": [e.to_dict() for e in entries],
        }

    async def health(self) -> dict[str, Any]:
        status = "healthy"
        if self._broken is not None:
            status = "unhealthy"
        elif self._refusing or (self._signer is not None and self._size > self._signed_size
                                and (self.stats["checkpoint_failures"] and self._retry_at > 0)):
            status = "degraded"
        ipfs = self._pusher.status() if self._pusher is not None else None
        if ipfs is not None and ipfs.get("lag_seconds", 0) > 300:
            status = "degraded" if status == "healthy" else status
        return {
            "status": status, "sink": "chain", "folder": str(self.root), "entries": self._size,
            "head": self.head, "sync": self.sync,
            "checkpoint": self._checkpoint.cid_text if self._checkpoint else None,
            "unsigned_entries": self._size - self._signed_size,
            "signer": self._signer is not None, "error": self._broken or self.last_error,
            "torn_bytes_recovered": self.torn_bytes, "ipfs": ipfs,
        }


def _block_of(recovered: Recovered, cid: bytes) -> bytes:
    return next(r.block for r in recovered.tail if r.cid == cid)


_OPEN: dict[tuple[Path, int], AuditChain] = {}


def shared_chain(folder: Path, **options: Any) -> AuditChain:
    """The chain of ``folder`` for this process: two services over one data directory (two
    providers in one script, a test building two) share its one writer instead of the
    second being refused by the folder's lock and going on unaudited. Shared within one
    event loop only: the chain's writer tasks live in the loop that opened it."""
    try:
        loop = id(asyncio.get_running_loop())
    except RuntimeError:
        loop = 0
    key = (folder.resolve(), loop)
    chain = _OPEN.get(key)
    if chain is not None and not chain._closed:
        return chain.share()
    for stale in [k for k, c in _OPEN.items() if c._closed]:
        del _OPEN[stale]
    _OPEN[key] = chain = AuditChain(folder, **options)
    return chain

"""Data-plane worker processes: N processes serve one port, side by side.

Python runs one thread of bytecode at a time, so one process uses one core.  ``qkms serve``
starts ``QKMS_DATA_PLANE_WORKERS`` worker processes (``config.ServeConfig``; default: one
per core) that each listen on the same port with ``SO_REUSEPORT``: the kernel spreads
connections among them.
Each worker writes its own audit chain (``QKMS_AUDIT_WRITER`` plus ``-w<n>``: its own
folder under the environment's audit folder, read by ``qkms audit verify``), so workers
never contend for a log, and each chain keeps its own order.  The parent process keeps
the one reconciler and starts, watches and stops the workers; a worker that dies is
started again.  Changes to a key (a rotation, a revocation) reach every worker through
the store's change feed (``store.changes``), checked on every use.  Metrics: every
process counts into prometheus-client's multiprocess folder (``metrics_folder``), so every
scrape, whichever worker answers, sums the parent's and every worker's counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("key-management:server")

RESTART_DELAY = 1.0  # seconds before a dead worker is started again
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def writer_name(base: str, index: int) -> str:
    """The audit writer of worker ``index``: the process's own writer name plus ``-w<n>``."""
    return f"{base}-w{index}" if base else f"w{index}"


def metrics_folder(env: dict[str, str]) -> Callable[[], None]:
    """Make ``env`` (``os.environ`` before prometheus_client is imported, as the library
    requires) name an empty multiprocess folder for the parent and its workers; returns
    what removes it after the run.  A folder the user named in ``PROMETHEUS_MULTIPROC_DIR``
    is emptied of the library's files at start, as its documentation asks, and kept."""
    given = env.get(MULTIPROC_ENV, "").strip()
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink(missing_ok=True)
        return lambda: None
    made = tempfile.mkdtemp(prefix="qkms-metrics-")
    env[MULTIPROC_ENV] = made

    def remove() -> None:
        if env.get(MULTIPROC_ENV) == made:
            del env[MULTIPROC_ENV]
        shutil.rmtree(made, ignore_errors=True)
    return remove


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` that other processes of this user may share."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@dataclass
class WorkerPool:
    """Start ``count`` workers, each ``command + ["--worker-fd", fd]`` with its own socket
    bound to ``host:port`` (SO_REUSEPORT) and its own audit writer (``writer`` plus
    ``-w<n>``, in the environment it starts the worker with); restart one that dies;
    stop them all.  The parent closes its copy of each socket once the worker has it, so
    no connection waits on a socket nobody accepts from.  ``exited`` is told the pid of
    each worker that is gone (its live metrics are dropped)."""

    command: Sequence[str]
    host: str
    port: int
    count: int
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))  # forwarded
    writer: str = ""  # this process's audit writer (Settings.audit_writer)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: int = 0
    exited: Callable[[int], None] = lambda pid: None
    _stopping: bool = False

    def _spawn(self, index: int, sock: socket.socket | None = None) -> None:
        sock = sock or reuseport_socket(self.host, self.port)
        try:
            env = {**self.env, "QKMS_AUDIT_WRITER": writer_name(self.writer, index),
                "QKMS_WORKER_PARENT": str(os.getpid())}
            self.procs[index] = subprocess.Popen(
                [*self.command, "--worker-fd", str(sock.fileno())], env=env,
                pass_fds=(sock.fileno(),))
        finally:
            sock.close()

    def start(self, first: socket.socket | None = None) -> None:
        """``first``: a socket bound already (reported a busy port before any key was made);
        it must have SO_REUSEPORT set."""
        for index in range(1, self.count + 1):
            self._spawn(index, first if index == 1 else None)

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart workers that exit until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=RESTART_DELAY)
            for index, proc in list(self.procs.items()):
                if proc.poll() is not None and not stop.is_set():
                    log.error("data-plane worker %d exited (%s); starting it again", index,
                              proc.returncode)
                    self.restarts += 1
                    self.exited(proc.pid)
                    self._spawn(index)

    async def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.exited(proc.pid)


async def publish_metrics(metrics: Any, registry: Any, stop: asyncio.Event,
                          every: float) -> None:
    """Keep this process's audit-failure counts current in the shared metrics (every
    ``every`` seconds until ``stop``): the process that answers a scrape renders every
    process's."""
    while not stop.is_set():
        metrics.sync(registry.all())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT and SIGTERM set (in the running loop): what a process of
    ``qkms serve`` or of an operator's data plane waits on, to stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def until_stopped(stop: asyncio.Event, parent: int | None = None,
                        every: float = 1.0) -> None:
    """Wait for ``stop``, or until the process that started this worker is gone
    (``parent``: its pid; None: this process's parent now)."""
    parent = parent or os.getppid()
    while not stop.is_set() and not parent_gone(parent):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


@dataclass
class Supervised:
    """A started pool with what restarts its dead workers and what keeps this process's
    metrics published, until ``cleanup`` (``qkms serve``'s and an operator replica's)."""

    pool: WorkerPool
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]

    @classmethod
    def start(cls, pool: WorkerPool, metrics: Any, registry: Any, stop: asyncio.Event,
              every: float) -> Supervised:
        return cls(pool, stop, [asyncio.create_task(pool.watch(stop)),
                                asyncio.create_task(publish_metrics(metrics, registry, stop,
                                                                    every))])

    async def cleanup(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.pool.stop()


def parent_gone(parent: int) -> bool:
    """Whether the process that started this worker is gone (it was re-parented)."""
    return os.getppid() != parent


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command that runs this ``qkms serve`` again, as a worker."""
    return [sys.executable, "-m", "qkms", *argv]

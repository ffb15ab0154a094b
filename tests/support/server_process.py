"""A local test server as a child process: start, wait until it answers, pause, stop.

Shared by the OpenBao and moto fixtures.  ``pause`` (SIGSTOP) makes the server accept
connections and never answer, which is how a hung provider looks to a client; ``resume``
(SIGCONT) brings it back with its state intact.  The child gets SIGTERM if pytest dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path


class ServerError(RuntimeError):
    """The server did not start or answer; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """``preexec_fn``: on Linux, SIGTERM the child when the test process dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def http_status(url: str, timeout: float = 1.0, method: str = "GET") -> int | None:
    """The HTTP status of a GET (or `method`), or None when nothing answers."""
    try:
        request = urllib.request.Request(url, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as rsp:  # noqa: S310 - loopback
            return int(rsp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, TimeoutError):
        return None


class ServerProcess:
    """One child process with its log file under ``workdir``."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runs = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.runs}.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def spawn(self, command: Sequence[str], env: dict[str, str] | None = None) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.runs += 1
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.workdir, env={**os.environ, **(env or {})},
                                          preexec_fn=die_with_parent)

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ServerError(f"{self.name} exited while {what}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise ServerError(f"{self.name} not {what} after {timeout:g}s:\n{self.log_tail()}")

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP: connections are accepted by the kernel and never answered.

        Returns once every thread is stopped: a thread running on another CPU can still
        answer a request for a moment after the signal is sent.
        """
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self._proc.pid}/task")
        deadline = time.monotonic() + timeout
        while tasks.exists() and time.monotonic() < deadline:
            states = []
            for stat in tasks.glob("*/stat"):
                with contextlib.suppress(OSError):
                    states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            if states and all(state in ("T", "t") for state in states):
                return
            time.sleep(0.01)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (after SIGCONT, in case it is paused), SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

"""A Kopf operator under test, run as its own OS process against the real API server.

A subprocess (not ``kopf.testing.KopfRunner``'s thread) is what makes crash tests honest:
the test can SIGKILL it mid-handler and start a new one in a fresh working directory, so
whatever survives must have been persisted in the API, as in a real pod restart.

The command is ``python -m kopf run --verbose --liveness=URL --standalone --all-namespaces
-m MODULE`` with ``KUBECONFIG`` pointing at the API server (see :class:`OperatorProcess`).
Kopf's liveness endpoint doubles as the readiness signal, so tests never sleep blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.server_process import die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[2]


class OperatorError(RuntimeError):
    """The operator died or did not become ready; the message carries its log."""


class OperatorProcess:
    """Start, stop, SIGKILL and restart ``kopf run`` for one operator module.

    `target` is a module name (``qkms.k8s.handlers``) or a ``.py`` path. Each start
    gets a new working directory and log file under `workdir`. `namespaces` restricts Kopf
    to those namespaces; by default it serves all of them (``--all-namespaces``), which
    avoids namespace scanning. `standalone` disables peering; pass ``peering="name"`` to
    use a (Cluster)KopfPeering object instead.
    """

    def __init__(self, target: str, *, kubeconfig: Path, workdir: Path,
                 env: Mapping[str, str] | None = None, namespaces: Sequence[str] = (),
                 standalone: bool = True, peering: str | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.target = target
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.extra_env = dict(env or {})
        self.namespaces = list(namespaces)
        self.standalone = standalone and peering is None
        self.peering = peering
        self.extra_args = list(extra_args)
        self.runs = 0
        self.liveness_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def cwd(self) -> Path:
        return self.workdir / f"run-{self.runs}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"operator-{self.runs}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "kopf", "run", "--verbose",
                f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz"]
        if self.standalone:
            args.append("--standalone")
        elif self.peering:
            args.append(f"--peering={self.peering}")
        args += [f"--namespace={ns}" for ns in self.namespaces] or ["--all-namespaces"]
        args += self.extra_args
        args += [self.target] if self.target.endswith(".py") else ["-m", self.target]
        return args

    def environment(self) -> dict[str, str]:
        """The parent's environment, minus in-cluster hints, plus the kubeconfig and paths."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
        paths = [str(ROOT), str(ROOT / "operator"), env.get("PYTHONPATH", "")]
        env.update(KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, paths)))
        env.update(self.extra_env)
        return env

    def log(self, run: int | None = None) -> str:
        path = self.workdir / f"operator-{run or self.runs}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        return f"--- operator run {self.runs} log (tail) ---\n" + "\n".join(
            self.log().splitlines()[-lines:])

    async def start(self, *, timeout: float = 30.0) -> None:
        """Start in a fresh working directory and wait until Kopf's liveness probe answers."""
        if self.running:
            raise RuntimeError("the operator is already running")
        self.runs += 1
        self.cwd.mkdir(parents=True)
        self.liveness_port = free_port()
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(self.command(), cwd=self.cwd, env=self.environment(),
                                          stdout=log, stderr=subprocess.STDOUT,
                                          preexec_fn=die_with_parent)
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        async with aiohttp.ClientSession() as session:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    code = None if self._proc is None else self._proc.returncode
                    raise OperatorError(f"the operator exited with {code}\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as rsp:
                        if rsp.status == 200:
                            return
                if time.monotonic() > deadline:
                    await self.kill()
                    raise OperatorError(f"not ready within {timeout}s\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    async def _wait_exit(self, timeout: float | None) -> int | None:
        assert self._proc is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return self._proc.returncode

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (Kopf's graceful exit), then SIGKILL if it takes longer than `timeout`."""
        if not self.running:
            return None if self._proc is None else self._proc.returncode
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        code = await self._wait_exit(timeout)
        return code if code is not None else await self.kill()

    async def kill(self) -> int | None:
        """SIGKILL: no cleanup, no final patches; what the API holds is all that survives."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.kill()
        return await self._wait_exit(None)

    async def restart(self, *, kill: bool = False) -> None:
        await (self.kill() if kill else self.stop())
        await self.start()


@contextlib.asynccontextmanager
async def operator_process(target: str, *, kubeconfig: Path, workdir: Path,
                           **kwargs: Any) -> AsyncIterator[OperatorProcess]:
    """Run the operator for the duration of the block; always stop it at the end."""
    operator = OperatorProcess(target, kubeconfig=kubeconfig, workdir=workdir, **kwargs)
    try:
        await operator.start()
        yield operator
    finally:
        await operator.stop()

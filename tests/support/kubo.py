"""kubo, the reference IPFS node, as the audit chain's IPFS for tests.

The binary is built from the Go module proxy by ``tests/controlplane/build.sh kubo`` (cached
in ``~/.cache/qkms/servers``; ``QKMS_KUBO_BIN`` names a ready one instead). Each node gets
its own repository made with ``ipfs init --profile=test`` (no bootstrap peers, no MDNS)
and runs ``ipfs daemon --offline`` with its RPC API and gateway on 127.0.0.1 at free
ports and no swarm listener, so it never dials out or accepts peers.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server_process import ServerError, ServerProcess, free_port, http_status
from tests.support.servers import require_server

ROOT = Path(__file__).resolve().parents[2]


def kubo_binary() -> Path:
    if path := os.environ.get("QKMS_KUBO_BIN"):
        return Path(path)
    run = subprocess.run(["bash", str(ROOT / "tests/controlplane/build.sh"), "kubo"],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise ServerError(f"building kubo failed (needs Go 1.26):\n{run.stderr[-2000:]}")
    return Path(run.stdout.split()[-1]) / "ipfs"


class Kubo(ServerProcess):
    name = "kubo"

    def __init__(self, workdir: Path, binary: Path) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.port = free_port()
        self.env = {"IPFS_PATH": str(workdir / "repo")}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ipfs(self, *args: str) -> str:
        run = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                             env={**os.environ, **self.env}, check=False, timeout=60)
        if run.returncode != 0:
            raise ServerError(f"ipfs {' '.join(args)}: {run.stderr.strip()}")
        return run.stdout

    def init(self) -> None:
        self.ipfs("init", "--profile=test")
        self.ipfs("config", "Addresses.API", f"/ip4/127.0.0.1/tcp/{self.port}")
        self.ipfs("config", "Addresses.Gateway", f"/ip4/127.0.0.1/tcp/{free_port()}")
        self.ipfs("config", "--json", "Addresses.Swarm", "[]")
        self.ipfs("config", "--json", "Bootstrap", "[]")
        self.ipfs("config", "--json", "Discovery.MDNS.Enabled", "false")

    def start(self, timeout: float = 60.0) -> None:
        self.spawn([str(self.binary), "daemon", "--offline"], env=self.env)
        self.wait_until(lambda: http_status(self.endpoint + "/api/v0/version") == 405,
                        timeout, "answering")  # the RPC API takes POST only

    def holds(self, cid: str) -> bool:
        """Whether the node has the block (offline: it never asks a peer)."""
        url = f"{self.endpoint}/api/v0/block/stat?arg={cid}"
        return http_status(url, method="POST") == 200



@pytest.fixture
def make_kubo(tmp_path: Path) -> Iterator:
    """Make (and, after the test, stop) kubo nodes: ``make_kubo(start=True)``."""
    nodes: list[Kubo] = []

    def make(start: bool = True) -> Kubo:
        try:
            node = Kubo(tmp_path / f"kubo-{len(nodes)}", kubo_binary())
            node.init()
            if start:
                node.start()
        except (ServerError, OSError) as exc:
            require_server("kubo", str(exc))
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()

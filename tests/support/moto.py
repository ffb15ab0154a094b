"""moto in server mode (``pip install 'moto[server]'``) as AWS KMS for tests.

One server per test session on 127.0.0.1 (fixture ``moto_server``), up in ~0.5 s, state in
memory; ``reset()`` (``POST /moto-api/reset``) clears it.  Credentials are dummies: moto
checks none.  What moto does differently from AWS KMS is asserted in
``tests/providers/test_aws.py`` next to the affected test, not hidden here.
"""

from __future__ import annotations

import importlib.util
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server_process import ServerError, ServerProcess, free_port, http_status
from tests.support.servers import require_server

REGION = "us-east-1"


class MotoServer(ServerProcess):
    name = "moto"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def options(self, **extra: str) -> dict[str, str]:
        """The provider options, as the seed's environment variables plus dummy credentials."""
        return {"AWS_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", **extra}

    def client(self):  # -> botocore KMS client
        import boto3
        return boto3.client("kms", region_name=REGION, endpoint_url=self.endpoint,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def start(self, timeout: float = 30.0) -> None:
        self.spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)])
        self.wait_until(lambda: http_status(f"{self.endpoint}/moto-api/") == 200, timeout,
                        "answering")

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310 - loopback
            pass


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    for module in ("moto.server", "boto3"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            require_server("moto", f"{module} is not installed (pip install 'moto[server]' boto3)")
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        server.start()
    except (ServerError, OSError) as exc:
        server.stop()
        require_server("moto", str(exc))
    yield server
    server.stop()


@pytest.fixture
def aws_options(moto_server: MotoServer) -> dict[str, str]:
    return moto_server.options()

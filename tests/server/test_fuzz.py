"""Schemathesis against the running server: every answer matches /openapi.json, and no
5xx other than 503 (provider faults) ever comes back, whatever the input."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from qkms.config import Settings
from qkms.server.app import start_data_plane
from qkms.server.auth import TokensFile
from qkms.server.openapi import document
from qkms.standalone import Standalone
from tests.server.common import TOKENS
from tests.server.conftest import EXTRA, tokens_file
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
schema = schemathesis.openapi.from_dict(document())


@schema.auth()
class BearerToken:
    """Through schemathesis, so that cases that negate the security scheme go without."""

    def get(self, case, ctx) -> str:
        return TOKENS["checkout"]

    def set(self, case, data, ctx) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> str:
    """The data plane in a thread of its own, for schemathesis's synchronous calls."""
    tmp = tmp_path_factory.mktemp("fuzz")
    folder = tmp / "manifests"
    shutil.copytree(ROOT / "examples", folder)
    (folder / "extra.yaml").write_text(EXTRA)
    port = free_port()
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        standalone = Standalone(Settings(data_dir=tmp / "data"), folder, tmp / "out",
                                say=lambda line: None)
        standalone.refresh()
        await standalone.reconcile_all()
        auth = TokensFile(tokens_file(tmp / "tokens.yaml"))
        runner = await start_data_plane(standalone, standalone.registry, auth, auth,
                                        f"127.0.0.1:{port}")
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(30), "the data plane did not start"
    yield f"http://127.0.0.1:{port}"
    stop.set()
    thread.join(10)


def no_5xx_but_503(ctx, response, case) -> bool | None:
    assert response.status_code < 500 or response.status_code == 503, (
        f"{response.status_code} for {case.method} {case.formatted_path}")
    return None


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case, server_url) -> None:
    if case.path.startswith("/v1/keys/"):
        # Aim at real keys half the time, so generated bodies reach the crypto.
        if case.path_parameters and hash(str(case.body)) % 2:
            case.path_parameters = {"namespace": "payments", "name": "user-service-signing"}
    # positive_data_acceptance is left out: a well-formed request for a key that does not
    # exist, or in a namespace the caller may not use, is rightly refused (404, 403).
    case.call_and_validate(base_url=server_url, additional_checks=[no_5xx_but_503],
                           excluded_checks=[positive_data_acceptance])

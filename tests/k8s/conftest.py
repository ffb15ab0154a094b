"""Fixtures for the Kubernetes tests: kmock's emulated API and Kopf operators as processes.

No cluster is needed: each test starts its own API server on 127.0.0.1 (a free port) and
stops it afterwards. If the emulator cannot start, the test fails under
``QKMS_REQUIRE_SERVERS=1`` (CI) and is skipped with the reason otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.servers import require_server

try:
    from tests.support.kube import KubeAPI, ServerStartError
    from tests.support.operator_process import OperatorProcess
except ImportError as exc:  # kmock, kopf or kubernetes is not installed
    IMPORT_ERROR: str | None = f"cannot import the harness: {exc!r}"
else:
    IMPORT_ERROR = None

SAMPLE_OPERATOR = "tests.k8s.sample_operator"


async def _started(workdir: Path, *, in_process: bool) -> KubeAPI:
    if IMPORT_ERROR:
        require_server("kmock", IMPORT_ERROR)
    api = KubeAPI(workdir, in_process=in_process)
    try:
        await api.start()
    except (ServerStartError, OSError) as exc:
        await api.close()
        require_server("kmock", f"the emulated Kubernetes API did not start: {exc}")
    return api


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeAPI]:
    """The emulated API in its own process: it outlives operators and can be restarted."""
    api = await _started(tmp_path / "kube", in_process=False)
    try:
        yield api
    finally:
        await api.close()
        print(f"--- kmock log ---\n{api.log()}")  # shown by pytest when the test fails


@pytest.fixture
async def kube_inproc(tmp_path: Path) -> AsyncIterator[KubeAPI]:
    """The emulated API in the test's event loop, with ``.emulator`` for kmock's views."""
    api = await _started(tmp_path / "kube", in_process=True)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def gate_dir(tmp_path: Path) -> Path:
    """Where tests hold the sample operator's handlers (see sample_operator.gate)."""
    path = tmp_path / "gates"
    path.mkdir()
    return path


@pytest.fixture
async def sample_operator(kube: KubeAPI, tmp_path: Path,
                          gate_dir: Path) -> AsyncIterator[OperatorProcess]:
    """The sample operator, configured but not started: tests start, kill and restart it."""
    operator = OperatorProcess(SAMPLE_OPERATOR, kubeconfig=kube.kubeconfig, kube=kube,
                               workdir=tmp_path / "operator",
                               env={"SAMPLE_GATE_DIR": str(gate_dir)})
    try:
        yield operator
    finally:
        await operator.stop()
        for run in range(1, operator.runs + 1):  # shown by pytest when the test fails
            print(f"--- operator run {run} ---\n{operator.log(run)}")


@pytest.fixture
async def running_operator(sample_operator: OperatorProcess) -> OperatorProcess:
    """The sample operator, already started (and stopped after the test)."""
    await sample_operator.start()
    return sample_operator

"""Fixtures for the operator tests: the qkms operator as a process on the real control plane.

The control plane itself (etcd + kube-apiserver + kube-controller-manager) and the ``kube``
admin client come from tests/support/fixtures.py. The operator logs in with a token of its
own ServiceAccount, bound by exactly the RBAC in manifests/03-rbac.yaml.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from tests.support.operator_process import OperatorProcess
from tests.support.server_process import free_port

OPERATOR = "qkms.k8s.handlers"


def operator_env(**extra: str) -> dict[str, str]:
    """What a pod of manifests/ gets, made fast for tests."""
    return {"QKMS_NAMESPACE": "qkms-system", "QKMS_STATE": "secrets", "QKMS_DATA_DIR": "data",
            "QKMS_KEY_CACHE_SECONDS": "0", "QKMS_API_LISTEN": f"127.0.0.1:{free_port()}",
            **extra}


def qkms_operator_process(kubeconfig: Path, workdir: Path,
                          env: Mapping[str, str] | None = None, **kwargs) -> OperatorProcess:
    return OperatorProcess(OPERATOR, kubeconfig=kubeconfig, workdir=workdir,
                           env=operator_env(**(env or {})), **kwargs)


@pytest.fixture
async def qkms_operator(kube, operator_kubeconfig: Path,
                        tmp_path: Path) -> AsyncIterator[OperatorProcess]:
    """The real qkms operator, configured but not started."""
    operator = qkms_operator_process(operator_kubeconfig, tmp_path / "operator",
                                     {"QKMS_BACKUP_INTERVAL_SECONDS": "2",
                                      "QKMS_BACKUP_DELAY_SECONDS": "1"})
    try:
        yield operator
    finally:
        await operator.stop()
        for run in range(1, operator.runs + 1):  # shown by pytest when the test fails
            print(f"--- operator run {run} ---\n{operator.log(run)}")


@pytest.fixture
async def issuer_operator(operator_kubeconfig: Path,
                          tmp_path: Path) -> AsyncIterator[OperatorProcess]:
    """The qkms operator started for the cert-manager issuer tests (issuer retries in 1 s)."""
    process = qkms_operator_process(operator_kubeconfig, tmp_path / "operator",
                                    {"QKMS_ISSUER_RETRY_SECONDS": "1"})
    await process.start()
    try:
        yield process
    finally:
        await process.stop()
        print(f"--- operator ---\n{process.log()}")

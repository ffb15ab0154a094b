"""What qkms reads from its environment outside the operator (qkms/config.py): the audit
options and writer in ``Settings``, ``ServeConfig``, ``ClientConfig``, ``CommandConfig`` and
the insecure-KEK override. The same defaults as before the reads moved there, every variable
parsed, and a bad value refused naming its variable. (The operator's: tests/k8s/
test_operator_config.py.)"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from qkms.audit import chain, mac
from qkms.config import (
    AUDIT_SYNC_MODES,
    AuditOptions,
    ClientConfig,
    CommandConfig,
    OperatorConfig,
    ServeConfig,
    Settings,
    available_cores,
    cpu_limit,
    insecure_kek_allowed,
    pod_cores,
)
from qkms.errors import InvalidDurationError, InvalidInputError


def test_audit_defaults_are_the_chain_and_keyring_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.audit == AuditOptions() and settings.audit_writer == ""
    assert settings.audit_mac_rotation == mac.DEFAULT_ROTATION == timedelta(days=90)
    assert AUDIT_SYNC_MODES == chain.SYNC_MODES
    arguments = AuditOptions().chain_arguments()
    defaults = chain.AuditChain.__init__.__kwdefaults__
    assert arguments == {name: defaults[name] for name in arguments}


def test_audit_variables_are_parsed() -> None:
    settings = Settings.from_env({
        "QKMS_AUDIT_WRITER": " qkms-0 ", "QKMS_AUDIT_MAC_ROTATION": "P30D",
        "QKMS_AUDIT_SYNC": " WRITE", "QKMS_AUDIT_FSYNC_INTERVAL": "0.5",
        "QKMS_AUDIT_CHECKPOINT_SECONDS": "5", "QKMS_AUDIT_CHECKPOINT_EVERY": "10",
        "QKMS_IPFS_API": " http://127.0.0.1:5001 "})
    assert settings.audit_writer == "qkms-0"
    assert settings.audit_mac_rotation == timedelta(days=30)
    assert settings.audit.chain_arguments() == {
        "sync": "write", "fsync_interval": 0.5, "checkpoint_interval": 5.0,
        "checkpoint_every": 10, "ipfs_endpoint": "http://127.0.0.1:5001"}
    # An empty variable is an unset one, as before.
    assert Settings.from_env({"QKMS_AUDIT_SYNC": "", "QKMS_AUDIT_CHECKPOINT_EVERY": " ",
                              "QKMS_IPFS_API": "", "QKMS_AUDIT_MAC_ROTATION": ""}) == Settings()


@pytest.mark.parametrize(("variable", "value"), [
    ("QKMS_AUDIT_SYNC", "sometimes"), ("QKMS_AUDIT_FSYNC_INTERVAL", "soon"),
    ("QKMS_AUDIT_CHECKPOINT_SECONDS", "-1"), ("QKMS_AUDIT_CHECKPOINT_EVERY", "ten"),
    ("QKMS_AUDIT_CHECKPOINT_EVERY", "0"),
])
def test_a_bad_audit_option_is_refused_naming_it(variable: str, value: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        Settings.from_env({variable: value})
    assert refused.value.field == variable


def test_a_bad_mac_rotation_is_refused_naming_it() -> None:
    with pytest.raises(InvalidDurationError, match="QKMS_AUDIT_MAC_ROTATION"):
        Settings.from_env({"QKMS_AUDIT_MAC_ROTATION": "every month"})


def test_serve_config() -> None:
    assert ServeConfig.from_env({}, cpus=2) == ServeConfig(workers=2)
    assert ServeConfig.from_env({"QKMS_DATA_PLANE_WORKERS": "auto"}, cpus=0).workers == 1
    assert ServeConfig.from_env({}, cpus=200).workers == 64
    config = ServeConfig.from_env({"QKMS_DATA_PLANE_WORKERS": " 3 ",
                                   "QKMS_METRICS_TOKEN": " s3cret ",
                                   "QKMS_WORKER_PARENT": "4242"}, cpus=2)
    assert (config.workers, config.metrics_token, config.worker_parent) == (3, "s3cret", 4242)
    assert "s3cret" not in repr(config)
    for bad in ("0", "65", "-1", "two"):
        with pytest.raises(InvalidInputError) as refused:
            ServeConfig.from_env({"QKMS_DATA_PLANE_WORKERS": bad}, cpus=2)
        assert refused.value.field == "QKMS_DATA_PLANE_WORKERS"
    with pytest.raises(InvalidInputError) as refused:
        ServeConfig.from_env({"QKMS_WORKER_PARENT": "me"})
    assert refused.value.field == "QKMS_WORKER_PARENT"


def test_auto_workers_follow_the_containers_cpu_limit(tmp_path) -> None:
    """``auto`` counts the cores a process may run on, capped by the cgroup v2 ``cpu.max``
    quota (rounded up); an operator replica without a CPU limit starts one (``pod_cores``),
    not one per node core."""
    cpu_max = tmp_path / "cpu.max"
    runnable = len(os.sched_getaffinity(0))
    for text, limit, cores, pod in (("50000 100000\n", 1, 1, 1),
                                    ("150000 100000\n", 2, min(2, runnable), min(2, runnable)),
                                    ("max 100000\n", None, runnable, 1),
                                    ("garbage", None, runnable, 1)):
        cpu_max.write_text(text)
        assert (cpu_limit(cpu_max), available_cores(cpu_max), pod_cores(cpu_max)) == \
            (limit, cores, pod), text
    assert (available_cores(tmp_path / "missing"), pod_cores(tmp_path / "missing")) == \
        (runnable, 1)


def test_the_operator_takes_the_same_workers_setting() -> None:
    assert OperatorConfig.from_env({}, cpus=3).workers == 3
    config = OperatorConfig.from_env({"QKMS_DATA_PLANE_WORKERS": "2",
                                      "QKMS_WORKER_PARENT": "77"}, cpus=8)
    assert (config.workers, config.worker_parent) == (2, 77)
    with pytest.raises(InvalidInputError) as refused:
        OperatorConfig.from_env({"QKMS_DATA_PLANE_WORKERS": "many"})
    assert refused.value.field == "QKMS_DATA_PLANE_WORKERS"


def test_the_operator_reads_the_metrics_token_too() -> None:
    config = OperatorConfig.from_env({"QKMS_METRICS_TOKEN": " s3cret\n"})
    assert config.metrics_token == "s3cret" and "s3cret" not in repr(config)
    assert OperatorConfig.from_env({}).metrics_token == ""


def test_client_config() -> None:
    assert ClientConfig.from_env({}) == ClientConfig(
        url="https://qkms.qkms-system:8443", token=None, token_file=None, ca_file=None)
    config = ClientConfig.from_env({"QKMS_URL": "http://127.0.0.1:8443", "QKMS_TOKEN": "t0k",
                                    "QKMS_TOKEN_FILE": "/run/token", "QKMS_CA_FILE": "/ca.crt"})
    assert config == ClientConfig("http://127.0.0.1:8443", "t0k", Path("/run/token"),
                                  Path("/ca.crt"))
    assert "t0k" not in repr(config)
    assert ClientConfig.from_env({"QKMS_TOKEN": "", "QKMS_TOKEN_FILE": "",
                                  "QKMS_CA_FILE": ""}) == ClientConfig()


def test_command_config() -> None:
    assert CommandConfig.from_env({}) == CommandConfig(None, None, None)
    config = CommandConfig.from_env({"QKMS_DATA_DIR": "/var/qkms", "QKMS_ENVIRONMENT": " Prod ",
                                     "QKMS_IMPORT_PASSWORD": "pw"})
    assert config == CommandConfig(Path("/var/qkms"), "prod", "pw")
    assert "pw" not in repr(config).replace("CommandConfig", "")
    # Not checked here: `qkms audit` works on folders of chains, whatever they are called.
    assert CommandConfig.from_env({"QKMS_ENVIRONMENT": "lab"}).environment == "lab"


def test_insecure_kek_override() -> None:
    assert insecure_kek_allowed({}) is False and insecure_kek_allowed({"X": "1"}) is False
    for yes in ("1", "true", "YES"):
        assert insecure_kek_allowed({"QKMS_ALLOW_INSECURE_KEK": yes}) is True
    for no in ("", "0", "false", "no"):
        assert insecure_kek_allowed({"QKMS_ALLOW_INSECURE_KEK": no}) is False
    with pytest.raises(InvalidInputError) as refused:
        insecure_kek_allowed({"QKMS_ALLOW_INSECURE_KEK": "maybe"})
    assert refused.value.field == "QKMS_ALLOW_INSECURE_KEK"

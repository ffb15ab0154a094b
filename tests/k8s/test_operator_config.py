"""What the operator reads from its environment (qkms/config.py OperatorConfig): the same
defaults as before the variables moved there, every variable parsed, and a bad value
refused naming its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkms.config import OperatorConfig
from qkms.errors import InvalidInputError


def test_defaults_with_nothing_set() -> None:
    config = OperatorConfig.from_env({}, cpus=1)  # workers: auto (config.pod_cores)
    assert config == OperatorConfig()
    assert (config.namespace, config.state, config.data_dir) == \
        ("qkms-system", "secrets", Path("/tmp/qkms"))
    assert config.watch_namespaces == () and config.peering_priority is None
    assert (config.peering_lifetime, config.announce_seconds, config.event_replay_seconds,
            config.intent_sweep_seconds, config.anchor_seconds, config.issuer_retry_seconds,
            config.backup_interval_seconds, config.backup_delay_seconds,
            config.auth_cache_seconds) == (60, 3.0, 600.0, 30.0, 5.0, 5.0, 86400.0, 300.0, 10.0)
    assert (config.api_listen, config.audiences, config.tls) == \
        ("0.0.0.0:8443", ("qkms",), "auto")
    assert config.tls_cert is config.tls_key is config.tls_client_ca is None


def test_every_variable_is_parsed() -> None:
    config = OperatorConfig.from_env({
        "QKMS_NAMESPACE": "kms", "QKMS_STATE": "files", "QKMS_DATA_DIR": "/var/lib/qkms",
        "QKMS_WATCH_NAMESPACES": " apps, payments ,,", "QKMS_PEERING_PRIORITY": "7",
        "QKMS_PEERING_LIFETIME": "3", "QKMS_ANNOUNCE_SECONDS": "0.5",
        "QKMS_EVENT_REPLAY_SECONDS": "0", "QKMS_INTENT_SWEEP_SECONDS": "2",
        "QKMS_ANCHOR_SECONDS": "1", "QKMS_ISSUER_RETRY_SECONDS": "1.5",
        "QKMS_BACKUP_INTERVAL_SECONDS": "2", "QKMS_BACKUP_DELAY_SECONDS": "1",
        "QKMS_API_LISTEN": "127.0.0.1:9443", "QKMS_AUDIENCES": "kms.example, qkms",
        "QKMS_AUTH_CACHE_SECONDS": "0", "QKMS_TLS": "AUTO",
        "QKMS_TLS_CERT": "/tls/tls.crt", "QKMS_TLS_KEY": "/tls/tls.key",
        "QKMS_TLS_CLIENT_CA": "/tls/ca.crt", "QKMS_DATA_PLANE_WORKERS": "1"})
    assert config == OperatorConfig(
        namespace="kms", state="files", data_dir=Path("/var/lib/qkms"),
        watch_namespaces=("apps", "payments"), peering_priority=7, peering_lifetime=3,
        announce_seconds=0.5, event_replay_seconds=0.0, intent_sweep_seconds=2.0,
        anchor_seconds=1.0, issuer_retry_seconds=1.5, backup_interval_seconds=2.0,
        backup_delay_seconds=1.0, api_listen="127.0.0.1:9443",
        audiences=("kms.example", "qkms"), auth_cache_seconds=0.0, tls="auto",
        tls_cert=Path("/tls/tls.crt"), tls_key=Path("/tls/tls.key"),
        tls_client_ca=Path("/tls/ca.crt"))


def test_tls_defaults_to_off_on_loopback_only() -> None:
    assert OperatorConfig.from_env({"QKMS_API_LISTEN": "127.0.0.1:8443"}).tls == "off"
    assert OperatorConfig.from_env({"QKMS_API_LISTEN": "0.0.0.0:8443"}).tls == "auto"
    assert OperatorConfig.from_env({"QKMS_API_LISTEN": ""}).api_listen == ""  # no data plane


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("QKMS_ANNOUNCE_SECONDS", "soon", "not a number"),
    ("QKMS_BACKUP_INTERVAL_SECONDS", "0", "> 0"),
    ("QKMS_INTENT_SWEEP_SECONDS", "-1", "> 0"),
    ("QKMS_EVENT_REPLAY_SECONDS", "nan", ">= 0"),
    ("QKMS_AUTH_CACHE_SECONDS", "inf", ">= 0"),
    ("QKMS_PEERING_LIFETIME", "1.5", "not an integer"),
    ("QKMS_PEERING_LIFETIME", "0", "at least 1"),
    ("QKMS_PEERING_PRIORITY", "high", "not an integer"),
    ("QKMS_STATE", "disk", "secrets, files"),
    ("QKMS_TLS", "on", "auto or off"),
    ("QKMS_AUDIENCES", " , ", "no audience"),
])
def test_a_bad_value_names_its_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        OperatorConfig.from_env({variable: value})
    assert caught.value.field == variable
    assert says in str(caught.value)


def test_plain_http_off_loopback_and_a_certificate_without_key_are_refused() -> None:
    with pytest.raises(InvalidInputError) as caught:
        OperatorConfig.from_env({"QKMS_TLS": "off", "QKMS_API_LISTEN": "0.0.0.0:8443"})
    assert caught.value.field == "QKMS_TLS" and "loopback" in str(caught.value)
    with pytest.raises(InvalidInputError) as caught:
        OperatorConfig.from_env({"QKMS_TLS_CERT": "/tls/tls.crt"})
    assert caught.value.field == "QKMS_TLS_KEY"

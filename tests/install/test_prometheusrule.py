"""The seed's alerts: an optional PrometheusRule, the same from manifests/ and Helm, and
every metric it names is one qkms exports."""

from __future__ import annotations

import re
from pathlib import Path

import helm_python as helm
import yaml

from qkms.server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULE = ROOT / "manifests" / "optional" / "prometheusrule.yaml"
CHART = ROOT / "helm" / "qkms"
ALERTS = {"QkmsRotationFailures", "QkmsKeyRotationOverdue", "QkmsProviderUnavailable",
          "QkmsAuditStorageFailures", "QkmsUnusualKeyUsage"}


def rule() -> dict:
    return yaml.safe_load(RULE.read_text())


def exported_metrics() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_the_seed_alerts_are_there_and_use_exported_metrics() -> None:
    rules = rule()["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == ALERTS
    exported = exported_metrics() | {"qkms_rotations_total", "qkms_operations_total"}
    for r in rules:
        used = set(re.findall(r"\bqkms_[a-z_]+", r["expr"]))
        assert used and used <= exported, (r["alert"], used - exported)


def _render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="qkms", namespace="qkms-system")
    return [doc for path, text in rendered.items() if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def test_helm_renders_the_same_rule_only_when_enabled() -> None:
    assert not [o for o in _render({}) if o["kind"] == "PrometheusRule"]
    rendered = [o for o in _render({"metrics": {"prometheusRule": {"enabled": True}}})
                if o["kind"] == "PrometheusRule"]
    assert rendered == [rule()]


def test_not_applied_by_a_plain_kubectl_apply() -> None:
    """Clusters without the Prometheus operator must still install with -f manifests/."""
    assert not list((ROOT / "manifests").glob("*prometheus*"))

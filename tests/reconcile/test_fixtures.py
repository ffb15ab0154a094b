"""Reconcile decisions from YAML fixtures: an input resource, its expected status and output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qkms.config import Settings
from qkms.model.managed_key import parse_managed_key
from qkms.model.policy import parse_key_policy
from qkms.reconcile.reconciler import KeyReconciler
from qkms.reconcile.registry import ServiceRegistry

HERE = Path(__file__).parent
FIXTURES = sorted((HERE / "fixtures").glob("*.yaml"))
POLICIES = yaml.safe_load((HERE / "policies.yaml").read_text())


def condition_map(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
async def test_fixture(path: Path, tmp_path, clock) -> None:
    case = yaml.safe_load(path.read_text())
    registry = ServiceRegistry(Settings(data_dir=tmp_path), clock=clock)
    reconciler = KeyReconciler(registry, clock=clock)
    policies = [parse_key_policy({"apiVersion": "qkms.io/v1alpha1", "kind": "KeyPolicy",
                                  **POLICIES[name]}) for name in case.get("policies", [])]
    mk = parse_managed_key(case["input"])
    outcome = await reconciler.reconcile(mk, case["namespaceLabels"], policies)
    status = outcome.status.to_dict()
    expect = case["expect"]
    for key, value in expect["status"].items():
        if key == "conditions":
            assert {k: condition_map(status)[k] for k in value} == value
        else:
            assert status[key] == value, key
    assert [e.reason for e in outcome.events] == expect["events"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    if "readyReason" in expect:
        assert ready["reason"] == expect["readyReason"]
    if "readyMessage" in expect:
        assert ready["message"] == expect["readyMessage"]
    if "projectionKeys" in expect:
        assert sorted(outcome.projection) == expect["projectionKeys"]
    created = any(s.user_records() for s in registry.all())
    assert created is expect.get("created", True)

"""The reconciler over time: requests run once, schedules rotate, deletion follows policy."""

from __future__ import annotations

import json

import pytest

from qkms.config import Settings
from qkms.errors import ProviderUnavailableError
from qkms.model.enums import Environment, VersionState
from qkms.model.managed_key import parse_managed_key
from qkms.reconcile.reconciler import KeyReconciler
from qkms.reconcile.registry import ServiceRegistry

DEV = {"qkms.io/environment": "dev"}


def body(**spec) -> dict:
    return {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": "k", "namespace": "ns", "uid": "uid-1", "generation": 1,
                         "resourceVersion": "7"},
            "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "o",
                     "projection": {"secretName": "k-pub"}, **spec}}


@pytest.fixture
def reconciler(tmp_path, clock):
    return KeyReconciler(ServiceRegistry(Settings(data_dir=tmp_path), clock=clock), clock=clock)


async def run(reconciler, raw: dict, status=None):
    mk = parse_managed_key(raw)
    if status is not None:
        mk = mk.model_copy(update={"status": status})
    return await reconciler.reconcile(mk, DEV, [])


async def test_reconcile_is_idempotent(reconciler) -> None:
    first = await run(reconciler, body())
    second = await run(reconciler, body(), first.status)
    assert second.events == [] and second.status.key_id == first.status.key_id
    assert len(second.record.versions) == 1


async def test_scheduled_rotation_grace_and_retirement(reconciler, clock) -> None:
    raw = body(rotationSchedule="PT10S", gracePeriod="PT4S")
    out = await run(reconciler, raw)
    assert out.requeue_after == 10.0
    clock.advance(seconds=10)
    out = await run(reconciler, raw, out.status)
    assert [e.reason for e in out.events] == ["KeyRotated"]
    assert [v.state for v in out.record.versions] == [VersionState.GRACE, VersionState.ACTIVE]
    assert len(json.loads(out.projection["jwks.json"])["keys"]) == 2
    assert out.requeue_after == 4.0
    assert {c.type: c.status for c in out.status.conditions}["Rotating"] == "True"
    clock.advance(seconds=4)
    out = await run(reconciler, raw, out.status)
    assert [v.state for v in out.record.versions] == [VersionState.RETIRED, VersionState.ACTIVE]
    assert len(json.loads(out.projection["jwks.json"])["keys"]) == 1


async def test_annotation_rotation_runs_once_and_asks_to_remove_the_annotation(reconciler):
    out = await run(reconciler, body())
    raw = body()
    raw["metadata"]["annotations"] = {"qkms.io/rotate": "COMPROMISE"}
    out = await run(reconciler, raw, out.status)
    assert [e.reason for e in out.events] == ["KeyRotated"]
    assert out.remove_annotations == ["qkms.io/rotate", "qkms.io/rotate-id"]
    assert out.record.versions[0].state is VersionState.REVOKED
    again = await run(reconciler, raw, out.status)  # e.g. a retry before the annotation went
    assert again.events == [] and len(again.record.versions) == 2


async def test_gitops_rotation_token_runs_once_per_value(reconciler) -> None:
    out = await run(reconciler, body())
    for token, versions in (("t1", 2), ("t1", 2), ("t2", 3)):
        out = await run(reconciler, body(rotationRequest={"token": token}), out.status)
        assert len(out.record.versions) == versions
    assert out.status.last_request_token == "t2"


async def test_revocation_from_spec(reconciler) -> None:
    out = await run(reconciler, body())
    out = await run(reconciler, body(revoked={"reason": "leaked"}), out.status)
    assert [e.reason for e in out.events] == ["KeyRevoked"]
    assert out.status.phase == "Revoked"
    assert {c.type: c.status for c in out.status.conditions}["Ready"] == "False"


async def test_algorithm_change_is_a_migration_keeping_both_in_jwks(reconciler) -> None:
    out = await run(reconciler, body())
    out = await run(reconciler, body(algorithm="Ed25519+ML-DSA-65"), out.status)
    assert [e.reason for e in out.events] == ["KeyMigrated"]
    assert [v.algorithm for v in out.record.versions] == ["Ed25519", "Ed25519+ML-DSA-65"]
    kinds = {k["kty"] for k in json.loads(out.projection["jwks.json"])["keys"]}
    assert "OKP" in kinds


async def test_schedule_change_replans_the_next_rotation(reconciler) -> None:
    out = await run(reconciler, body())
    before = out.status.next_rotation
    out = await run(reconciler, body(rotationSchedule="P1D", gracePeriod="PT1H"), out.status)
    assert out.status.next_rotation < before


@pytest.mark.parametrize("policy,state", [("Retain", VersionState.ACTIVE),
                                          ("Delete", VersionState.PENDING_DELETION)])
async def test_deletion_policy(reconciler, policy, state) -> None:
    raw = body(deletionPolicy=policy)
    out = await run(reconciler, raw)
    await reconciler.delete(parse_managed_key(raw), DEV, [])
    service = reconciler.registry.get(out.record.environment)
    assert service.get_record("ns/k").current.state is state


async def test_crash_after_provider_create_leaves_no_second_key(reconciler, tmp_path) -> None:
    """A retry after the provider made material but before the catalog write adopts nothing
    half-made: exactly one key exists, and the sweep removes the orphan material."""
    service = reconciler.registry.get(Environment.DEV)
    original = service.catalog.put

    def crash(record, **_):
        raise OSError("disk went away")

    service.catalog.put = crash
    with pytest.raises(OSError):
        await run(reconciler, body())
    service.catalog.put = original
    out = await run(reconciler, body())
    assert len(service.user_records()) == 1 and len(out.record.versions) == 1
    named = {v.key_id for r in service.catalog.all() for v in r.versions}
    # The orphans: the key's, and the audit checkpoint key's (made before the first entry).
    assert len(set(service.sealed.list("material")) - named) == 2
    assert list((await service.resolve_intents()).values()) == ["orphaned"] * 2
    assert set(service.sealed.list("material")) == named


async def test_provider_outage_is_degraded_and_retryable(reconciler) -> None:
    out = await run(reconciler, body())
    service = reconciler.registry.get(out.record.environment)

    async def down(*args, **kwargs):
        raise ProviderUnavailableError("LOCAL_DEV store unreachable")

    service.provider.new_version = down
    raw = body(rotationRequest={"token": "now"})
    failed = await run(reconciler, raw, out.status)
    assert failed.retry
    conditions = {c.type: (c.status, c.reason) for c in failed.status.conditions}
    assert conditions["Degraded"] == ("True", "ProviderUnavailable")
    assert [e.reason for e in failed.events] == ["ProviderUnavailable"]


async def test_policy_credentials_come_from_the_secret_reference(tmp_path, clock) -> None:
    """credentialsSecretRef's data reaches the provider settings; settings never inline it."""
    from qkms.model.policy import parse_key_policy

    policy = parse_key_policy({"apiVersion": "qkms.io/v1alpha1", "kind": "KeyPolicy",
                               "metadata": {"name": "dev"},
                               "spec": {"environment": "dev", "provider": {
                                   "type": "LOCAL_DEV", "settings": {"timeout": "3"},
                                   "credentialsSecretRef": {"name": "creds"}}}})
    asked = []

    async def credentials(p):
        asked.append(p.spec.provider.credentials_secret_ref.name)
        return {"VAULT_TOKEN": "s3cr3t-token"}

    registry = ServiceRegistry(Settings(data_dir=tmp_path), clock=clock)
    reconciler = KeyReconciler(registry, clock=clock, credentials=credentials)
    out = await reconciler.reconcile(parse_managed_key(body()), DEV, [policy])
    service = registry.get(out.record.environment, policy, {"VAULT_TOKEN": "s3cr3t-token"})
    assert asked == ["creds"]
    assert service.settings.provider_options == {"timeout": "3", "VAULT_TOKEN": "s3cr3t-token"}
    assert "s3cr3t-token" not in repr(service.settings)
    assert registry.all() == [service]  # the same service: no rebuild between callers


async def test_a_policy_change_keeps_one_audit_log_writer(tmp_path, clock) -> None:
    """Rebuilding an environment's service (a KeyPolicy arrived) must not open a second
    writer on the same audit log: entries keep being stored, with CIDs."""
    from qkms.model.policy import parse_key_policy

    registry = ServiceRegistry(Settings(data_dir=tmp_path), clock=clock)
    reconciler = KeyReconciler(registry, clock=clock)
    first = await run(reconciler, body())
    assert first.status.last_audit_cid.startswith("bafy")
    policy = parse_key_policy({"apiVersion": "qkms.io/v1alpha1", "kind": "KeyPolicy",
                               "metadata": {"name": "dev"},
                               "spec": {"environment": "dev",
                                        "auditPolicy": {"failClosed": True}}})
    raw = body(rotationRequest={"token": "after-policy"})
    out = await reconciler.reconcile(parse_managed_key(raw).model_copy(
        update={"status": first.status}), DEV, [policy])
    assert out.events[0].reason == "KeyRotated"
    assert out.status.last_audit_cid.startswith("bafy")
    assert out.status.last_audit_cid != first.status.last_audit_cid


async def test_import_from_is_refused_by_name_where_no_secrets_can_be_read(reconciler) -> None:
    out = await run(reconciler, body(importFrom={"secretName": "legacy"}))
    ready = next(c for c in out.status.conditions if c.type == "Ready")
    assert ready.status == "False" and "spec.importFrom" in ready.message
    assert reconciler.registry.all()[0].user_records() == []

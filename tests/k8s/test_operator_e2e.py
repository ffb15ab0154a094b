"""The real qkms operator (Kopf + its handlers, as a process) against a real kube-apiserver.

The operator logs in as its own ServiceAccount with the RBAC it ships; the server
validates every object against the CRDs' schemas and CEL rules and runs admission.

Every file in examples/ is applied; then scheduled rotation, emergency rotation by
annotation, revocation, deletion through the finalizer, an environment mismatch, drift
repair and a kill -9 restart in a fresh working directory are each checked from outside,
through the API, as a user with kubectl would see them.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from qkms.config import Settings
from qkms.k8s.secret_store import SecretRecordStore, load_or_create_kek_secret
from qkms.model.enums import Environment
from qkms.service import KeyManagementService
from tests.k8s.conftest import qkms_operator_process
from tests.support.controlplane import ControlPlane
from tests.support.kubeclient import KubeClient, eventually

ROOT = Path(__file__).resolve().parents[2]
NS = "payments"
MK = "managedkeys"
PLURALS = {"Namespace": "namespaces", "KeyPolicy": "keypolicies", "ManagedKey": MK}


async def apply_examples(kube: KubeClient) -> None:
    paths = sorted((ROOT / "examples").glob("*.yaml"), key=lambda p: p.name != "namespaces.yaml")
    for path in paths:  # namespaces first, as a real API server demands
        for doc in yaml.safe_load_all(path.read_text()):
            namespace = doc["metadata"].get("namespace")
            await kube.create(PLURALS[doc["kind"]], doc, namespace)


def conditions(body: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}


async def ready(kube: KubeClient, name: str, namespace: str = NS) -> dict:
    async def probe():
        body = await kube.get(MK, name, namespace)
        return body if conditions(body).get("Ready", {}).get("status") == "True" else None
    return await eventually(probe, timeout=30, what=f"{namespace}/{name} Ready")


async def events(kube: KubeClient, name: str, namespace: str = NS) -> list[str]:
    return [e["reason"] for e in await kube.list("events", namespace)
            if e["involvedObject"]["name"] == name]


def service_for(control_plane: ControlPlane, tmp_path: Path) -> KeyManagementService:
    """A second qkms instance reading the operator's state from the API (as a replica would)."""
    api = k8s_config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    core = k8s_client.CoreV1Api(api)
    settings = Settings(environment=Environment.DEV, data_dir=tmp_path / "replica")
    records = SecretRecordStore(core, "qkms-system", "dev", watch=False)  # a one-shot reader
    return KeyManagementService(settings, records=records,
                                kek=load_or_create_kek_secret(core, "qkms-system"))


async def test_examples_become_ready_with_verifiable_projections(kube, qkms_operator, tmp_path,
                                                                  control_plane):
    await qkms_operator.start()
    await apply_examples(kube)
    for name in ("user-service-signing", "storage-encryption", "secure-service-signing",
                 "secure-service-kem", "release-signing"):
        body = await ready(kube, name)
        assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    secret = await kube.get("secrets", "user-service-signing-public", NS)
    pem = base64.b64decode(secret["data"]["public.pem"])
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "ManagedKey"
    replica = service_for(control_plane, tmp_path)
    signed = await replica.use_key(f"{NS}/user-service-signing", "SIGN", b"from a replica")
    load_pem_public_key(pem).verify(signed.signature, b"from a replica")
    ref = await kube.get("configmaps", "storage-encryption-ref", NS)
    assert set(ref["data"]) == {"key-id", "key-name", "algorithm", "version", "next-rotation"}
    await eventually(lambda: _has_event(kube, "user-service-signing", "KeyCreated"),
                     what="KeyCreated Event")
    # Events and status name the audit entry by its IPFS CID (CIDv1, base32: "bafy...").
    body = await ready(kube, "user-service-signing")
    assert body["status"]["lastAuditCid"].startswith("bafy")
    created = next(e for e in await kube.list("events", NS)
                   if e["reason"] == "KeyCreated"
                   and e["involvedObject"]["name"] == "user-service-signing")
    assert created["metadata"]["annotations"]["qkms.io/audit-ref"].startswith("bafy")
    assert "cid bafy" in created["message"]
    # The dev checkpoint key is pinned in the operator's namespace, for `audit verify`.
    pins = await kube.get("configmaps", "qkms-audit-pins", "qkms-system")
    assert base64.b64decode(pins["data"]["dev"]) == replica.audit_public_key()


async def test_a_pinned_audit_key_is_never_overwritten(kube, qkms_operator):
    """A rebuilt audit log (another checkpoint key) cannot replace the pin: the operator
    keeps the pinned key and says so loudly."""
    forged = base64.b64encode(b"\x01" * 32).decode()
    await kube.create("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": "qkms-audit-pins",
                                                  "namespace": "qkms-system"},
                                     "data": {"dev": forged}}, "qkms-system")
    await qkms_operator.start()
    await apply_examples(kube)
    await ready(kube, "user-service-signing")
    await eventually(lambda: "differs from the one pinned" in qkms_operator.log(), timeout=30,
                     what="the mismatch logged")
    pins = await kube.get("configmaps", "qkms-audit-pins", "qkms-system")
    assert pins["data"]["dev"] == forged


async def test_lifecycle_through_the_api(kube, qkms_operator):
    await qkms_operator.start()
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": NS,
                                                  "labels": {"qkms.io/environment": "dev"}}})
    spec = {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "team",
            "rotationSchedule": "PT4S", "gracePeriod": "PT2S",
            "projection": {"secretName": "fast-public"}}
    await kube.create(MK, {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                           "metadata": {"name": "fast", "namespace": NS}, "spec": spec}, NS)
    await ready(kube, "fast")

    async def states():
        body = await kube.get(MK, "fast", NS)
        return [v["state"] for v in body["status"]["versions"]]

    # Scheduled rotation on a seconds-long schedule, a grace period, then retirement.
    await eventually(lambda: _starts(states, ["RETIRED", "GRACE", "ACTIVE"],
                                     ["RETIRED", "RETIRED", "ACTIVE"]), timeout=30,
                     what="rotation, grace and retirement")
    assert "KeyRotated" in await events(kube, "fast")

    # Emergency rotation by annotation: the old version is revoked, the annotation removed.
    await kube.patch(MK, "fast", {"spec": {"rotationSchedule": "PT1H", "gracePeriod": "PT1M"}},
                     NS)
    before = len(await states())
    await kube.patch(MK, "fast", {"metadata": {"annotations": {"qkms.io/rotate": "COMPROMISE"}}},
                     NS)

    async def revoked():
        body = await kube.get(MK, "fast", NS)
        versions = body["status"]["versions"]
        annotations = body["metadata"].get("annotations") or {}
        return (len(versions) == before + 1 and versions[-2]["state"] == "REVOKED"
                and "qkms.io/rotate" not in annotations)
    await eventually(revoked, timeout=30, what="emergency rotation")

    # Drift: a deleted projection comes back.
    await kube.delete("secrets", "fast-public", NS)
    await eventually(lambda: kube.get("secrets", "fast-public", NS), timeout=30,
                     what="projection restored")

    # Revocation from the spec, then deletion through the finalizer.
    await kube.patch(MK, "fast", {"spec": {"revoked": {"reason": "decommissioned"}}}, NS)

    async def is_revoked():
        body = await kube.get(MK, "fast", NS)
        return body["status"].get("phase") == "Revoked"
    await eventually(is_revoked, timeout=30, what="revocation")
    await eventually(lambda: _has_event(kube, "fast", "KeyRevoked"), what="KeyRevoked Event")
    await kube.delete(MK, "fast", NS)
    await eventually(lambda: _gone(kube, "fast"), timeout=30, what="finalizer ran")
    await eventually(lambda: _has_event(kube, "fast", "KeyDeleted"), what="KeyDeleted Event")


async def _starts(states, *wanted: list[str]) -> bool:
    current = await states()
    return any(current[:len(w)] == w for w in wanted)


async def _has_event(kube: KubeClient, name: str, reason: str, namespace: str = NS) -> bool:
    return reason in await events(kube, name, namespace)


async def _gone(kube: KubeClient, name: str) -> bool:
    return await kube.get(MK, name, NS) is None


async def test_environment_mismatch_is_refused_and_recorded(kube, qkms_operator):
    await qkms_operator.start()
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": "shop",
                                                  "labels": {"qkms.io/environment": "prod"}}})
    await kube.create(MK, {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                           "metadata": {"name": "sneaky", "namespace": "shop"},
                           "spec": {"usage": "SIGNING", "algorithm": "Ed25519",
                                    "owner": "x", "environment": "dev"}}, "shop")

    async def refused():
        body = await kube.get(MK, "sneaky", "shop")
        return conditions(body).get("Ready", {}).get("reason") == "EnvironmentMismatch"
    await eventually(refused, timeout=30, what="environment mismatch refused")
    await eventually(lambda: _has_event(kube, "sneaky", "EnvironmentMismatch", "shop"),
                     what="EnvironmentMismatch Event")


async def test_kill_9_and_restart_in_a_fresh_workdir_resumes_without_duplicates(
        kube, qkms_operator, tmp_path, control_plane):
    await qkms_operator.start()
    await apply_examples(kube)
    key_ids = {}
    for name in ("user-service-signing", "release-signing"):
        key_ids[name] = (await ready(kube, name))["status"]["keyId"]
    await qkms_operator.restart(kill=True)  # SIGKILL; new process, new working directory
    await kube.create(MK, {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                           "metadata": {"name": "after-restart", "namespace": NS},
                           "spec": {"usage": "SIGNING", "algorithm": "ML-DSA-44",
                                    "owner": "x"}}, NS)
    await ready(kube, "after-restart")
    for name, key_id in key_ids.items():
        assert (await ready(kube, name))["status"]["keyId"] == key_id
    replica = service_for(control_plane, tmp_path)
    names = sorted(r.name for r in replica.user_records())
    assert len(names) == len(set(names)) == 6
    assert await replica.use_key(f"{NS}/release-signing", "SIGN", b"still usable")


async def test_two_replicas_under_peering_one_active_then_failover(kube, operator_kubeconfig,
                                                                   tmp_path):
    """HA: two operators in one peering with distinct priorities; one reconciles. SIGKILL
    it: once its peering record expires the other takes over, and nothing is made twice."""
    await kube.create("kopf.dev/v1/clusterkopfpeerings",
                      {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                       "metadata": {"name": "qkms"}})
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": NS,
                                                  "labels": {"qkms.io/environment": "dev"}}})
    replicas = [qkms_operator_process(
        operator_kubeconfig, tmp_path / f"replica-{i}", {"QKMS_PEERING_LIFETIME": "3"},
        peering="qkms", extra_args=[f"--priority={100 - i}"]) for i in range(2)]

    async def make(name: str) -> None:
        await kube.create(MK, {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                               "metadata": {"name": name, "namespace": NS},
                               "spec": {"usage": "SIGNING", "algorithm": "Ed25519",
                                        "owner": "ha"}}, NS)
        await ready(kube, name)

    try:
        for replica in replicas:
            await replica.start()
        for index in range(3):
            await make(f"ha-{index}")
        handled = "Handler 'reconcile_key' succeeded"
        assert handled in replicas[0].log()
        assert handled not in replicas[1].log()  # the standby reconciled nothing
        await replicas[0].kill()
        await make("after-failover")
        created = [e["involvedObject"]["name"] for e in await kube.list("events", NS)
                   if e["reason"] == "KeyCreated"]
        assert sorted(created) == ["after-failover", "ha-0", "ha-1", "ha-2"]
    finally:
        for index, replica in enumerate(replicas):
            await replica.stop()
            print(f"--- replica {index} ---\n{replica.log()}")


async def test_import_from_a_secret_and_scheduled_backups(kube, qkms_operator, tmp_path):
    """spec.importFrom brings an existing key in (same public key); the KeyPolicy's
    backupPolicy gets encrypted backups on the data volume."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    await qkms_operator.start()
    await apply_examples(kube)
    legacy = Ed25519PrivateKey.generate()
    pem = legacy.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    await kube.create("secrets", {"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": "legacy-key", "namespace": NS,
                                               "annotations": {
                                                   "qkms.io/import-allowed-for": "imported"}},
                                  "data": {"tls.key": base64.b64encode(pem).decode()}}, NS)
    await kube.create(MK, {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                           "metadata": {"name": "imported", "namespace": NS},
                           "spec": {"usage": "SIGNING", "owner": "legacy",
                                    "importFrom": {"secretName": "legacy-key"},
                                    "projection": {"configMapName": "imported-public"}}}, NS)
    await ready(kube, "imported")
    projected = await kube.get("configmaps", "imported-public", NS)
    expected = legacy.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    assert projected["data"]["public.pem"].encode() == expected
    backups = qkms_operator.cwd / "data" / "backups"
    found = await eventually(lambda: sorted(backups.glob("qkms-dev-*.json")) if backups.is_dir()
                             else None, timeout=30, what="a scheduled backup")
    assert b"PRIVATE" not in found[0].read_bytes()


async def test_gitops_rotation_request_migration_policy_replan_and_delete(
        kube, qkms_operator, tmp_path, control_plane):
    """One-shot requests from Git (spec.rotationRequest, exactly once per token), a
    migration by changing spec.algorithm, a KeyPolicy change re-planning its keys, and
    deletionPolicy Delete scheduling destruction through the finalizer."""
    await qkms_operator.start()
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": NS,
                                                  "labels": {"qkms.io/environment": "dev"}}})
    policy = yaml.safe_load((ROOT / "examples" / "keypolicy-dev.yaml").read_text())
    await kube.create("keypolicies", policy)
    await kube.create(MK, {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                           "metadata": {"name": "gitops", "namespace": NS},
                           "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "git",
                                    "deletionPolicy": "Delete"}}, NS)
    first = await ready(kube, "gitops")

    async def versions(count: int) -> dict | None:
        body = await kube.get(MK, "gitops", NS)
        status = body.get("status") or {}
        done = len(status.get("versions", [])) == count and \
            status.get("observedGeneration") == body["metadata"]["generation"]
        return body if done else None

    # A rotation request from Git: one new version; the same token again rotates nothing.
    await kube.patch(MK, "gitops", {"spec": {"rotationRequest": {"token": "2026-12-06-a",
                                                                 "reason": "MANUAL"}}}, NS)
    rotated = await eventually(lambda: versions(2), timeout=30, what="one rotation")
    assert rotated["status"]["lastRequestToken"] == "2026-12-06-a"
    await kube.patch(MK, "gitops", {"spec": {"owner": "git-team"}}, NS)  # a new generation
    still = await eventually(lambda: versions(2), timeout=30, what="re-reconciled")
    assert [v["state"] for v in still["status"]["versions"]] == ["GRACE", "ACTIVE"]

    # Migration: the next version uses the new algorithm, audited and announced.
    await kube.patch(MK, "gitops", {"spec": {"algorithm": "Ed25519+ML-DSA-65"}}, NS)
    migrated = await eventually(lambda: versions(3), timeout=30, what="migration")
    assert migrated["status"]["algorithm"] == "Ed25519+ML-DSA-65"
    await eventually(lambda: _has_event(kube, "gitops", "KeyMigrated"), what="KeyMigrated")

    # The KeyPolicy's schedule changes: its keys are re-planned without being touched.
    before = migrated["status"]["nextRotation"]
    await kube.patch("keypolicies", "dev", {"spec": {"rotationSchedule": {"SIGNING": "P10D"}}})

    async def replanned() -> bool:
        body = await kube.get(MK, "gitops", NS)
        return body["status"].get("nextRotation") not in (None, before)
    await eventually(replanned, timeout=30, what="the key re-planned by its policy")
    assert first["status"]["keyId"] != migrated["status"]["keyId"]

    # deletionPolicy Delete: the finalizer schedules destruction after the policy's window.
    await kube.delete(MK, "gitops", NS)
    await eventually(lambda: _gone(kube, "gitops"), timeout=30, what="finalizer ran")
    await eventually(lambda: _has_event(kube, "gitops", "KeyDeleted"), what="KeyDeleted")
    replica = service_for(control_plane, tmp_path)
    record = replica.get_record(f"{NS}/gitops")
    assert {v.state.value for v in record.versions} <= {"PENDING_DELETION", "DESTROYED",
                                                        "RETIRED", "REVOKED"}, record.versions
    assert any(v.state.value == "PENDING_DELETION" for v in record.versions)


async def test_deletion_with_retain_keeps_the_key_and_a_new_resource_adopts_it(
        kube, qkms_operator, tmp_path, control_plane):
    """deletionPolicy Retain (the default): deleting the ManagedKey releases it, audited and
    announced, and leaves every version usable in the provider; a ManagedKey of the same
    name made later adopts the same key instead of making a second one."""
    await qkms_operator.start()
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": NS,
                                                  "labels": {"qkms.io/environment": "dev"}}})
    manifest = {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                "metadata": {"name": "kept", "namespace": NS},
                "spec": {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "team"}}
    await kube.create(MK, manifest, NS)
    first = await ready(kube, "kept")
    await kube.delete(MK, "kept", NS)
    await eventually(lambda: _gone(kube, "kept"), timeout=30, what="finalizer ran")
    deleted = [e for e in await kube.list("events", NS)
               if e["involvedObject"]["name"] == "kept" and e["reason"] == "KeyDeleted"]
    assert deleted and "Retain" in deleted[0]["message"], deleted

    replica = service_for(control_plane, tmp_path)
    record = replica.get_record(f"{NS}/kept")
    assert [v.state.value for v in record.versions] == ["ACTIVE"]
    signed = await replica.use_key(f"{NS}/kept", "SIGN", b"still mine")
    assert await replica.use_key(f"{NS}/kept", "VERIFY", b"still mine",
                                 signature=signed.signature)

    await kube.create(MK, manifest, NS)
    again = await ready(kube, "kept")
    assert again["status"]["keyId"] == first["status"]["keyId"]
    assert len(again["status"]["versions"]) == 1


async def test_a_rotation_asked_for_during_creation_runs_once_and_promptly(kube, qkms_operator):
    """A rotation annotation that lands while the operator is still creating the key (a
    failpoint makes each creation take 4 s: tests/support/failpoints.py) is honoured right
    after the creation, not at the key's next timer a day away, and exactly once: placed
    at eight moments across the creation, with and without a request ID."""
    qkms_operator.extra_args = ["-m", "tests.support.failpoints"]
    qkms_operator.extra_env["QKMS_TEST_SLOW_CREATE_SECONDS"] = "4"
    await qkms_operator.start()
    await kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": NS,
                                                  "labels": {"qkms.io/environment": "dev"}}})
    spec = {"usage": "SIGNING", "algorithm": "Ed25519", "owner": "team",
            "rotationSchedule": "P1D"}
    names = [f"asked-{i}" for i in range(8)]
    for name in names:
        await kube.create(MK, {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
                               "metadata": {"name": name, "namespace": NS}, "spec": spec}, NS)

    async def annotate(i: int, name: str) -> None:
        await asyncio.sleep(0.6 * i)
        asked = {"qkms.io/rotate": "MANUAL"}
        if i % 2:
            asked["qkms.io/rotate-id"] = f"request-{i}"
        await kube.patch(MK, name, {"metadata": {"annotations": asked}}, NS)
    await asyncio.gather(*(annotate(i, name) for i, name in enumerate(names)))

    async def rotated() -> bool:
        for name in names:
            body = await kube.get(MK, name, NS)
            versions = (body.get("status") or {}).get("versions") or []
            if len(versions) < 2 or "qkms.io/rotate" in body["metadata"].get("annotations", {}):
                return False
        return True
    await eventually(rotated, timeout=30, what="each rotation asked for during creation")
    await asyncio.sleep(5)  # and never a second time
    for name in names:
        body = await kube.get(MK, name, NS)
        assert [v["version"] for v in body["status"]["versions"]] == [1, 2], name
        assert (await events(kube, name)).count("KeyRotated") == 1, name

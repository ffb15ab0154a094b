"""Service behaviour beyond the seed examples: events, concurrency, schedules, stats."""

from __future__ import annotations

import asyncio

from qkms.model.enums import VersionState


async def test_events_are_emitted(svc) -> None:
    seen: dict[str, list] = {"keyCreated": [], "keyRotated": [], "keyRevoked": []}
    for name, bucket in seen.items():
        svc.on(name, bucket.append)

    async def async_listener(event):  # coroutine listeners are awaited
        seen.setdefault("async", []).append(event)

    svc.on("keyRotated", async_listener)
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    rotation = await svc.rotate_key(key.key_id, reason="MANUAL")
    await svc.revoke_key(key.name, "retired service")
    assert seen["keyCreated"][0].key_id == key.key_id
    assert (seen["keyRotated"][0].old_key_id, seen["keyRotated"][0].new_key_id) == (
        key.key_id, rotation.new_key_id)
    assert seen["keyRevoked"][0]["reason"] == "retired service"
    assert seen["async"] == seen["keyRotated"]


async def test_a_failing_listener_does_not_break_the_operation(svc) -> None:
    svc.on("keyCreated", lambda event: 1 / 0)
    assert (await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")).version == 1


async def test_concurrent_use_and_rotation_never_lose_a_version(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")

    async def sign(i: int):
        result = await svc.use_key(key.name, "SIGN", f"m{i}".encode())
        assert await svc.use_key(result.key_id, "VERIFY", f"m{i}".encode(),
                                 signature=result.signature)

    await asyncio.gather(*[sign(i) for i in range(100)],
                         *[svc.rotate_key(key.name, reason="MANUAL") for _ in range(12)])
    record = svc.get_record(key.name)
    assert [v.version for v in record.versions] == list(range(1, 14))
    assert sum(v.state is VersionState.ACTIVE for v in record.versions) == 1
    assert record.current.state is VersionState.ACTIVE


async def test_short_schedules_rotate_on_tick(svc, clock) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o",
                               rotation_schedule="PT5S")
    assert await svc.tick() == {}
    clock.advance(seconds=5)
    assert await svc.tick() == {key.name: ["rotated"]}
    clock.advance(seconds=1)  # the default grace for a PT5S schedule is a fifth of it
    assert await svc.tick() == {key.name: ["retired"]}
    states = [v.state for v in svc.get_record(key.name).versions]
    assert states == [VersionState.RETIRED, VersionState.ACTIVE]


async def test_migration_changes_the_algorithm_of_the_next_version(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    seen = []
    svc.on("auditEvent", seen.append)
    result = await svc.rotate_key(key.name, algorithm="Ed25519+ML-DSA-65")
    assert (result.reason, result.algorithm) == ("MIGRATION", "Ed25519+ML-DSA-65")
    assert seen[-1].operation == "MIGRATE"
    await svc.rotate_key(key.name, algorithm="ML-DSA-65")
    record = svc.get_record(key.name)
    assert [v.algorithm for v in record.versions] == ["Ed25519", "Ed25519+ML-DSA-65", "ML-DSA-65"]
    jwks = svc.jwks(key.name)
    assert {k["kid"] for k in jwks["keys"]} >= {record.versions[0].key_id,
                                                record.versions[2].key_id}


async def test_request_ids_make_rotation_and_revocation_idempotent(svc) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    first = await svc.rotate_key(key.name, reason="COMPROMISE", request_id="r-1")
    again = await svc.rotate_key(key.name, reason="COMPROMISE", request_id="r-1")
    assert again.replayed and again.new_key_id == first.new_key_id
    assert len(svc.get_record(key.name).versions) == 2


async def test_deletion_window_then_destroy(svc, clock) -> None:
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    await svc.schedule_key_deletion(key.name, "P7D")
    await svc.cancel_key_deletion(key.name)
    assert (await svc.get_key(key.name)).state is VersionState.ACTIVE
    await svc.schedule_key_deletion(key.name, "P7D")
    clock.advance(days=7)
    assert await svc.tick() == {key.name: ["destroyed"]}
    assert svc.sealed.get("material", key.key_id) is None
    assert (await svc.get_key(key.key_id)).state is VersionState.DESTROYED


async def test_statistics_count_keys_operations_and_failures(svc) -> None:
    a = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    await svc.create_key(usage="ENCRYPTION", algorithm="AES-256-GCM", owner="o")
    await svc.use_key(a.key_id, "SIGN", b"m")
    await svc.rotate_key(a.key_id, reason="COMPROMISE")
    try:
        await svc.use_key(a.key_id, "SIGN", b"m")
    except Exception:
        pass
    stats = await svc.get_statistics()
    assert stats["keys"] == 2
    assert stats["by_algorithm"] == {"Ed25519": 1, "AES-256-GCM": 1}
    assert stats["by_usage"] == {"SIGNING": 1, "ENCRYPTION": 1}
    assert stats["by_state"] == {"ACTIVE": 2}
    assert stats["by_provider"] == {"LOCAL_DEV": 2}
    assert stats["operations"]["SIGN:success"] == 1
    assert stats["operations"]["SIGN:denied"] == 1
    assert stats["rotations"] == {"COMPROMISE": 1}
    assert stats["failures"]["key_revoked"] == 1


async def test_health_check_reports_each_component(svc) -> None:
    health = await svc.health_check()
    assert health["status"] == "healthy"
    assert set(health["components"]) == {"store", "kek", "provider", "audit"}
    assert health["components"]["provider"]["type"] == "LOCAL_DEV"


async def test_a_replica_sees_a_rotation_made_elsewhere(make_service) -> None:
    """Two services on one store (two replicas): B never signs with a version A revoked."""
    a, b = make_service(catalog_ttl=0.0), make_service(catalog_ttl=0.0)
    key = await a.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    assert (await b.use_key(key.name, "SIGN", b"m")).key_id == key.key_id
    rotation = await a.rotate_key(key.name, reason="COMPROMISE")
    assert (await b.use_key(key.name, "SIGN", b"m")).key_id == rotation.new_key_id

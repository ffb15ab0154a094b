"""Retention prunes whole segments at checkpoint boundaries; what remains still verifies."""

from __future__ import annotations

from datetime import timedelta

from qkms.audit.car import export_car, verify_car
from qkms.audit.chain import AuditChain
from qkms.audit.reports import build
from qkms.audit.retention import cutoff_for, prune
from qkms.audit.search import Query, search
from qkms.audit.store import segment_paths
from qkms.audit.verify import verify_folder
from qkms.crypto import verify_signature
from tests.audit.helpers import START, AuditKey, make_entry

HOUR = timedelta(hours=1)


async def chain_over_days(folder, count=60):
    async with AuditChain(folder, signer=AuditKey(), checkpoint_every=5,
                          segment_bytes=2500) as chain:
        for i in range(count):
            await chain.append(make_entry(i, time=START + i * HOUR))


async def test_prune_keeps_a_verifiable_anchored_suffix(tmp_path):
    await chain_over_days(tmp_path)
    before = len(segment_paths(tmp_path))
    assert before >= 4
    result = prune(tmp_path, START + 30 * HOUR)
    assert result.removed and result.entries_removed > 0
    assert len(segment_paths(tmp_path)) == before - len(result.removed)
    verified = verify_folder(tmp_path, check=verify_signature)
    assert verified.ok, verified.finding
    assert verified.anchor is not None and verified.anchor.cid_text == result.anchor
    assert verified.first_seq == result.first_seq_kept == result.entries_removed + 1
    assert verified.last_seq == 60 and verified.entries == 60 - result.entries_removed
    # every entry left is younger than... at least the segment holding the cutoff
    kept = list(search(tmp_path, Query()))
    assert kept[0]["seq"] == result.first_seq_kept
    assert (tmp_path / "pruned.jsonl").read_text().count("\n") == 1


async def test_the_writer_goes_on_after_a_prune_and_exports_still_verify(tmp_path):
    await chain_over_days(tmp_path)
    prune(tmp_path, START + 1000 * HOUR)  # everything is old: all but the last segment go
    assert len(segment_paths(tmp_path)) == 1
    async with AuditChain(tmp_path, signer=AuditKey(), checkpoint_every=5,
                          segment_bytes=2500) as chain:
        assert chain.size == 60
        await chain.append(make_entry(60, time=START + 60 * HOUR))
    assert verify_folder(tmp_path, check=verify_signature).ok
    car = tmp_path / "pruned.car"
    with open(car, "wb") as out:
        export_car(tmp_path, out)
    assert verify_car(car, check=verify_signature).ok
    assert build(tmp_path, "soc2", check=verify_signature)["built_from"]["checkpoint"]["size"] == 61


async def test_dry_run_and_nothing_old_enough(tmp_path):
    await chain_over_days(tmp_path)
    before = segment_paths(tmp_path)
    assert prune(tmp_path, START + 1000 * HOUR, dry_run=True).removed
    assert prune(tmp_path, START - HOUR).removed == []
    assert segment_paths(tmp_path) == before


def test_cutoff_from_a_retention_period():
    assert cutoff_for("P7Y", START).year == START.year - 7


async def test_the_service_prunes_to_its_policy_retention(tmp_path) -> None:
    """service.prune_audit applies Settings.audit_retention (the policy's retentionPeriod)."""
    from datetime import UTC, datetime, timedelta

    from qkms.config import Settings
    from qkms.service import KeyManagementService

    now = [datetime(2020, 1, 1, tzinfo=UTC)]
    settings = Settings(data_dir=tmp_path, audit_retention="P30D")
    svc = KeyManagementService(settings, clock=lambda: now[0])
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="o")
    for _ in range(5):
        await svc.use_key(key.key_id, "SIGN", b"m")
    await svc.audit.checkpoint()
    await svc.close()
    now[0] += timedelta(days=31)
    later = KeyManagementService(settings, clock=lambda: now[0])
    result = await later.prune_audit()
    # The cutoff is the policy's 30 days before now; the segment being written is kept,
    # so the chain (one segment here) still verifies whole.
    assert datetime.fromisoformat(result.cutoff) == now[0] - timedelta(days=30)
    assert result.removed == [] and result.entries_removed == 0

"""Which audit entries become Events, and under which name (qkms/k8s/announcer.py).

The catch-up itself runs on the real control plane in
tests/reliability/test_faults_kube_outage.py (no KeyCreated missing after an outage)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from qkms.audit.entry import Actor, AuditEntry
from qkms.k8s.announcer import SETTLE, announcement, due, event_name
from qkms.service import AUDIT_KEY

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def entry(sequence: int, operation: str = "CREATE", result: str = "success",
          name: str = "team/signer", age: float = 60.0) -> AuditEntry:
    return AuditEntry(time=NOW - timedelta(seconds=age), environment="dev",
                      operation=operation, result=result, actor=Actor(), key_name=name,
                      key_id=f"key_dev_{sequence:016x}", version=1,
                      details={"algorithm": "Ed25519"}, sequence=sequence,
                      cid=f"bafyentry{sequence}")


def test_a_successful_creation_of_a_users_key_is_announced_with_its_time_and_cid() -> None:
    wanted = announcement(entry(7))
    assert wanted is not None
    assert (wanted.namespace, wanted.name, wanted.reason) == ("team", "signer", "KeyCreated")
    assert "2026-12-06T11:59:00Z" in wanted.message and "cid bafyentry7" in wanted.message


def test_failures_uses_and_qkmss_own_key_are_not() -> None:
    assert announcement(entry(1, result="error")) is None
    assert announcement(entry(2, operation="SIGN")) is None
    assert announcement(entry(3, name=AUDIT_KEY)) is None


def test_due_entries_are_past_the_cursor_settled_and_young_enough() -> None:
    entries = [entry(1), entry(2, age=3600), entry(3), entry(4, age=SETTLE.seconds / 2)]
    since = NOW - timedelta(minutes=10)
    assert [e.sequence for e in due(entries, 0, NOW, since)] == [1, 3]
    assert [e.sequence for e in due(entries, 1, NOW, since)] == [3]


def test_one_name_per_announced_entry_whoever_posts_it() -> None:
    name = event_name("signer", "KeyCreated", "bafyentry7")
    assert name == event_name("signer", "KeyCreated", "bafyentry7")
    assert name != event_name("signer", "KeyCreated", "bafyentry8")
    assert name.startswith("signer.keycreated.") and len(name) <= 253

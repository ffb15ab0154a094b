"""The audit MAC keyring: keyed digests, rotation, and retired keys kept as long as their
entries (issue 14 item 2)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from qkms.audit.mac import AuditMac
from qkms.store.kek import Sealer
from qkms.store.records import MemoryRecordStore
from qkms.store.sealed import SealedStore


def test_digests_are_keyed_rotated_and_kept_for_the_retention_period() -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    sealed = SealedStore(MemoryRecordStore(), Sealer(b"k" * 32))
    mac = AuditMac(sealed, clock=lambda: now[0], rotation=timedelta(days=30))
    first = mac.digest(b"1234")
    assert first.startswith("hmac-sha256:") and hashlib.sha256(b"1234").hexdigest() not in first
    assert AuditMac(sealed).digest(b"1234") == first  # the key lives in the store
    now[0] += timedelta(days=31)
    assert mac.maintain(retention=timedelta(days=365)) == [f"rotated to {mac.keys()[-1].id}"]
    second = mac.digest(b"1234")
    assert second != first and mac.candidates(b"1234") == {first, second}
    now[0] += timedelta(days=364)  # the first key's entries may still be retained
    assert [d for d in mac.maintain(retention=timedelta(days=365)) if "dropped" in d] == []
    now[0] += timedelta(days=2)
    assert f"dropped {first.split(':')[1]}" in mac.maintain(retention=timedelta(days=365))
    assert first not in mac.candidates(b"1234")


def test_a_digest_is_hmac_sha256_of_the_data_under_the_key() -> None:
    import hmac

    mac = AuditMac(SealedStore(MemoryRecordStore(), Sealer(b"k" * 32)))
    key = mac.current()
    for data in (b"", b"1234", bytes(range(256)) * 5):
        expected = hmac.new(key.key, data, "sha256").hexdigest()
        assert mac.digest(data) == key.digest(data) == f"hmac-sha256:{key.id}:{expected}"

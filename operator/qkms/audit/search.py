"""Forensic search over the audit log: filters in, JSON lines out, streaming.

Search reads the log as it is, checking each block against its CID as it
goes (a block that fails is reported, never printed as if it were good); it
does not walk links or checkpoints.  Run ``qkms audit verify`` for that.
Entries hold digests of data, never data or key material, so nothing here
can leak either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qkms.errors import InvalidInputError

from .encoding import cid_str, decode, is_entry, parse_time
from .store import Damaged, iter_log


def parse_moment(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 date or date-time; without a zone it is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(field, f"{value!r} is not an ISO 8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Query:
    key: str | None = None        # key name or version key ID
    actor: str | None = None      # actor ID, or TYPE:ID
    operation: str | None = None  # case-insensitive
    result: str | None = None     # success | denied | error
    since: datetime | None = None
    until: datetime | None = None
    digests: frozenset[str] | None = None  # any of these keyed digests (``audit.mac``)

    def matches(self, value: dict[str, Any]) -> bool:
        if self.key is not None and self.key not in (value["keyName"], value["keyId"]):
            return False
        if self.digests is not None and not self.digests & set(
                (value.get("digests") or {}).values()):
            return False
        if self.actor is not None:
            actor = value["actor"]
            if self.actor not in (actor["id"], f"{actor['type']}:{actor['id']}"):
                return False
        if self.operation is not None and value["operation"].upper() != self.operation.upper():
            return False
        if self.result is not None and value["result"] != self.result.lower():
            return False
        if self.since is not None or self.until is not None:
            moment = parse_time(value["time"])
            if self.since is not None and moment < self.since:
                return False
            if self.until is not None and moment >= self.until:
                return False
        return True


def as_json(value: dict[str, Any], cid: str) -> dict[str, Any]:
    """An entry as one JSON object (links as CID text)."""
    return {
        "seq": value["seq"], "cid": cid,
        "prev": str(value["prev"]) if value["prev"] is not None else None,
        "time": value["time"], "environment": value["environment"],
        "operation": value["operation"], "result": value["result"], "reason": value["reason"],
        "actor": value["actor"], "key_name": value["keyName"], "key_id": value["keyId"],
        "version": value["keyVersion"], "digests": value["digests"], "details": value["details"],
    }


@dataclass
class SearchStats:
    scanned: int = 0
    matched: int = 0
    bad: list[str] | None = None


def search(root: Path, query: Query, stats: SearchStats | None = None
           ) -> Iterator[dict[str, Any]]:
    """Matching entries in log order, as JSON-ready dicts."""
    stats = stats if stats is not None else SearchStats()
    stats.bad = []
    try:
        for record in iter_log(root):
            if not is_entry(record.block):
                continue
            stats.scanned += 1
            if hashlib.sha256(record.block).digest() != record.cid[4:]:
                stats.bad.append(f"{cid_str(record.cid)} does not match its block")
                continue
            value = decode(record.block)
            if query.matches(value):
                stats.matched += 1
                yield as_json(value, cid_str(record.cid))
    except Damaged as exc:
        if not exc.tail:
            stats.bad.append(str(exc))

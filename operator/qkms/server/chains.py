"""The audit section of ``/health/keys`` over every writer's chain of an environment.

A service's chain is its own process's (one per data-plane worker of ``qkms serve``, one
per replica: ``QKMS_AUDIT_WRITER``); the others are written by other processes.  Health
reports them all, as ``qkms audit verify`` reads them, following each folder's newest
segment from where it last stopped (``read_from``), so a health check reads only what
was written since the previous one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkms.audit.checkpoint import parse_checkpoint
from qkms.audit.encoding import cid_str, entry_prefix, is_entry
from qkms.audit.generations import chain_folders
from qkms.audit.store import read_from, segment_paths


@dataclass
class _Position:
    segment: int = 0
    offset: int = 0
    entries: int = 0  # the newest entry's sequence number, as a chain's health says
    head: bytes | None = None


class ChainFollower:
    """Entries and head of every chain under an audit folder, read incrementally."""

    def __init__(self) -> None:
        self._positions: dict[Path, _Position] = {}
        self._lock = threading.Lock()  # health checks run in threads, maybe side by side

    def chains(self, own: Path, own_health: dict[str, Any]) -> list[dict[str, Any]]:
        """Every chain of ``own``'s environment, ``own`` first with its live figures."""
        found = [{"folder": str(own), "entries": own_health.get("entries", 0),
                  "head": own_health.get("head")}]
        for folder in chain_folders(own):
            if folder.resolve() == own.resolve():
                continue
            with self._lock:
                at = self._follow(folder)
            found.append({"folder": str(folder), "entries": at.entries,
                          "head": cid_str(at.head) if at.head else None})
        return found

    def _follow(self, folder: Path) -> _Position:
        at = self._positions.setdefault(folder.resolve(), _Position())
        for number, _ in segment_paths(folder):
            if number < at.segment:
                continue
            if number > at.segment:
                at.segment, at.offset = number, 0
            records = read_from(folder, number, at.offset)
            for record in records:
                try:
                    if is_entry(record.block):
                        at.entries, _ = entry_prefix(record.block)
                        at.head = record.cid
                    else:  # a checkpoint (a new segment opens with one) may name the head
                        checkpoint = parse_checkpoint(record.cid, record.block)
                        if checkpoint.size >= at.entries:
                            at.entries, at.head = checkpoint.size, checkpoint.head
                except ValueError:
                    continue  # verify reports a malformed record; health counts the rest
            if records:
                at.offset = records[-1].end
        return at


def audit_across_writers(component: dict[str, Any], own: Path | None,
                         follower: ChainFollower) -> dict[str, Any]:
    """A service's audit health with ``entries`` summed over every writer's chain and the
    chains listed (``folder`` and ``head`` stay this process's own chain's)."""
    if own is None or "entries" not in component:
        return component
    chains = follower.chains(own, component)
    return {**component, "entries": sum(c["entries"] for c in chains), "chains": chains}

"""Events as a projection of the audit chain: none lost to an API outage.

A KeyCreated Event used to be posted by the reconcile that made the key, once. If the
Kubernetes API went away between the key's creation (audited) and the Event, the retry
found the key made and announced nothing. The chain holds every CREATE, so the Events
are derived from it: the reconcile still posts its Event at once, and
:class:`Announcer` goes over the chain's newest entries behind it (every few seconds, and
so soon after the API is back) and posts the Event of every creation that has none, with
the original time in its message.

An Event that announces an audit entry has a name made of the key's name, its reason and
the entry's CID, so the same announcement posted twice (by the reconcile and the
catch-up, or after a restart) is refused by the API as AlreadyExists instead of showing
twice. The operator may only create Events (no list): what was announced is remembered
in memory, per chain, as the sequence number up to which every entry is announced.
After a restart only entries younger than ``QKMS_EVENT_REPLAY_SECONDS`` (600) are gone
over again: Kubernetes keeps Events an hour by default, and a burst of old
announcements would only be refused as AlreadyExists.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from qkms.audit.chain import AuditChain
from qkms.audit.entry import AuditEntry
from qkms.model.names import AUDIT_ANNOTATION
from qkms.service import AUDIT_KEY, KeyManagementService

log = logging.getLogger("key-management:operator")

ANNOUNCED = {"CREATE": "KeyCreated", "IMPORT": "KeyCreated"}
SETTLE = timedelta(seconds=5)  # the reconcile's own Event goes first


@dataclass(frozen=True)
class Announcement:
    namespace: str
    name: str
    reason: str
    message: str
    cid: str


def event_name(name: str, reason: str, cid: str) -> str:
    """The Event's name for one announced entry: the same for every poster."""
    return f"{name}.{reason.lower()}.{hashlib.sha256(cid.encode()).hexdigest()[:16]}"


def announcement(entry: AuditEntry) -> Announcement | None:
    """The Event an entry should have, or None (a failure, qkms's own key, a use)."""
    reason = ANNOUNCED.get(entry.operation)
    if (reason is None or entry.result != "success" or not entry.cid
            or not entry.key_name or entry.key_name == AUDIT_KEY or "/" not in entry.key_name):
        return None
    namespace, _, name = entry.key_name.partition("/")
    algorithm = entry.details.get("algorithm", "")
    message = (f"created {entry.key_id} ({algorithm}) at {entry.time:%Y-%m-%dT%H:%M:%SZ} "
               f"[audit #{entry.sequence} cid {entry.cid}]; announced from the audit chain")
    return Announcement(namespace, name, reason, message, entry.cid)


def due(entries: list[AuditEntry], after: int, now: datetime,
        since: datetime) -> list[AuditEntry]:
    """The entries past sequence ``after``, written at or after ``since`` and settled."""
    return [e for e in entries if (e.sequence or 0) > after and since <= e.time <= now - SETTLE]


class Announcer:
    def __init__(self, kube: Any, replay: timedelta, started: datetime) -> None:
        self.kube = kube
        self.since = started - replay
        self.posted: set[str] = set()  # CIDs announced by this process
        self.cursor: dict[int, int] = {}  # chain (id) -> every entry up to here announced

    def announced(self, cid: str | None) -> None:
        if cid:
            self.posted.add(cid)

    async def catch_up(self, services: list[KeyManagementService], now: datetime) -> int:
        """Post the missing Events of every service's chain; returns how many it posted.
        Stops at the first API error: the next pass starts from the same entry."""
        posted = 0
        for service in services:
            chain = service.audit
            if not isinstance(chain, AuditChain):
                continue
            in_flight: set[str] | None = None
            for entry in due(chain.recent(1000), self.cursor.get(id(chain), 0), now,
                             self.since):
                wanted = announcement(entry)
                if wanted is not None and service.name_of_key_id(
                        entry.key_id or "") != entry.key_name:
                    # Not in the catalog: a creation still being written (its intent is
                    # open: wait for it), or one the store refused (withdrawn: skip).
                    if in_flight is None:
                        in_flight = service.open_intents()
                    if entry.key_id in in_flight:
                        break
                    wanted = None
                if wanted is not None and wanted.cid not in self.posted:
                    owner = await self.kube.managed_key(wanted.namespace, wanted.name)
                    if owner is not None:  # a key deleted since has nothing to announce on
                        await self.kube.post_event(
                            owner, "Normal", wanted.reason, wanted.message,
                            {AUDIT_ANNOTATION: wanted.cid},
                            name=event_name(wanted.name, wanted.reason, wanted.cid),
                            strict=True)
                        posted += 1
                if wanted is not None:
                    self.posted.discard(wanted.cid)  # behind the cursor from now on
                self.cursor[id(chain)] = entry.sequence or 0
        if posted:
            log.info("posted %d Event(s) the audit chain had and the cluster had not", posted)
        return posted

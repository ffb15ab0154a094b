"""Each key record's latest generation, as the audit chain remembers it.

Every change to a key's catalog record is audited before it is written, and the
entry carries the record's new generation (``details.generation``).  The store's
writer can put an older record file back; it cannot rewind the hash-linked,
checkpoint-signed chain without ``qkms audit verify`` noticing.  So replaying the
chain gives, per key, the lowest generation its record may have: ``Catalog``
refuses an older one as rolled back.

One allowance keeps a crash from looking like an attack.  The entry is written
(and fsynced) before the record, so a process killed between the two leaves the
chain one generation ahead.  If that newest entry is not yet covered by a signed
checkpoint (a clean stop signs one) and its change only moved the key forward
(creation, a scheduled rotation, a policy change: nothing that took a version out
of use), the previous generation is accepted.  A revocation, a compromise
rotation, a deletion or a destruction is never given that allowance: after one of
those, the older record stays refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .encoding import decode, is_entry
from .store import Damaged, iter_log

log = logging.getLogger("key-management:audit")

MARK = b"generation"
FORWARD_ONLY = {"CREATE", "IMPORT", "POLICY_CHANGE", "RELEASE", "CANCEL_DELETION", "RESTORE"}


def _forward_only(value: dict) -> bool:
    """Whether an entry's change only moved the key forward (see the module's note)."""
    operation, details = value.get("operation"), value.get("details") or {}
    if value.get("result") != "success":
        return False  # a failed write: its entry names the generation that stayed
    if operation in FORWARD_ONLY:
        return True
    if operation in ("ROTATE", "MIGRATE"):
        return value.get("reason") != "COMPROMISE" and details.get("old_state") != "REVOKED"
    if operation == "EXPIRE":
        return "destroyed" not in str(details.get("actions", ""))
    return False


def chain_folders(root: Path) -> list[Path]:
    """The audit chains under an environment's audit folder: its own and one per writer."""
    base = root.parent if root.parent.name == "audit" else root
    folders = [base] if (base / "segments").is_dir() else []
    if base.is_dir():
        folders += sorted(p for p in base.iterdir() if (p / "segments").is_dir())
    return folders


def floors(root: Path) -> dict[str, int]:
    """Key name -> the lowest generation its record may have, from every chain in ``root``."""
    found: dict[str, int] = {}
    for folder in chain_folders(root):
        for name, floor in _chain_floors(folder).items():
            found[name] = max(found.get(name, 0), floor)
    return found


def _chain_floors(folder: Path) -> dict[str, int]:
    latest: dict[str, tuple[int, bool]] = {}  # name -> (generation, forward only)
    unsigned: set[str] = set()  # keys whose newest entry no checkpoint covers yet
    try:
        for record in iter_log(folder):
            if not is_entry(record.block):
                unsigned.clear()  # a checkpoint covers every entry before it
                continue
            if MARK not in record.block:
                continue
            value = decode(record.block)
            generation = str((value.get("details") or {}).get("generation"))
            name = value.get("keyName")
            if not name or not generation.isdigit():
                continue
            latest[name] = (int(generation), _forward_only(value))  # the newest entry wins
            unsigned.add(name)
    except Damaged as exc:
        if not exc.tail:
            log.error("audit: %s is damaged (%s): generations read up to there", folder, exc)
    except OSError as exc:
        log.error("audit: cannot read %s: %s", folder, exc)
    return {name: generation - 1 if name in unsigned and forward else generation
            for name, (generation, forward) in latest.items()}

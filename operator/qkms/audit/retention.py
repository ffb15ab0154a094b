"""Retention: drop whole old segments, only where a signed checkpoint anchors the rest.

Segments roll right after a checkpoint and each new segment opens with a
copy of it, so removing every segment before one leaves a log that starts
with a signed (size, head): the verifier takes that as the start of the
chain.  Only a prefix is removed, never the segment being written, and a
segment goes only when its newest entry is older than the cutoff (P7Y by
default, the KeyPolicy's ``auditPolicy.retentionPeriod``).  Each prune is
logged in ``pruned.jsonl``; the checkpoint file is kept whole, so the
history of checkpoints outlives the entries.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from qkms.model.durations import parse_duration

from .checkpoint import parse_checkpoint
from .encoding import cid_str, decode, entry_prefix, is_entry, parse_time
from .store import Damaged, parse, segment_paths

DEFAULT_RETENTION = "P7Y"


@dataclass
class PruneResult:
    cutoff: str
    removed: list[str] = field(default_factory=list)
    entries_removed: int = 0
    first_seq_kept: int | None = None
    anchor: str | None = None
    dry_run: bool = False


def cutoff_for(retention: str = DEFAULT_RETENTION, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - parse_duration(retention, "retentionPeriod")


def _summary(path: Path) -> tuple[datetime | None, int, int | None, bytes | None]:
    """(time of the newest entry, entries, first seq, CID of a leading checkpoint)."""
    newest = first = anchor = None
    count = 0
    try:
        for i, record in enumerate(parse(path.read_bytes(), path, 0, check_hash=False)):
            if is_entry(record.block):
                seq = entry_prefix(record.block)[0]
                first = seq if first is None else first
                count += 1
                last_block = record.block
            elif i == 0:
                anchor = parse_checkpoint(record.cid, record.block).cid
    except Damaged:
        pass
    if count:
        newest = parse_time(decode(last_block)["time"])
    return newest, count, first, anchor


def prune(root: Path, before: datetime, *, dry_run: bool = False) -> PruneResult:
    """Remove the longest prefix of segments older than ``before`` that leaves an anchor."""
    result = PruneResult(cutoff=before.isoformat(), dry_run=dry_run)
    paths = segment_paths(root)
    summaries = [(_summary(path), path) for _, path in paths]
    doomed: list[Path] = []
    for i in range(len(paths) - 1):  # never the segment being written
        (newest, count, _, _), path = summaries[i]
        (_, _, next_first, next_anchor), _ = summaries[i + 1]
        if newest is not None and newest >= before or next_anchor is None:
            break
        doomed.append(path)
        result.entries_removed += count
        result.first_seq_kept = next_first
        result.anchor = cid_str(next_anchor)
    result.removed = [p.name for p in doomed]
    if dry_run or not doomed:
        return result
    for path in doomed:
        os.unlink(path)
    with open(root / "pruned.jsonl", "a") as handle:
        handle.write(json.dumps({**asdict(result), "at": datetime.now(UTC).isoformat()}) + "\n")
    return result

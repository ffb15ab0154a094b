"""Compliance reports (SOC 2, GDPR) built only from the verified, signed chain.

The report first verifies the whole chain; if it fails, there is no report.
It then uses only entries covered by the newest checkpoint (signed), names
that checkpoint's CID, and says how many newer, unsigned entries it left out
(``allow_unsigned`` takes them in, for a chain with no signer, and says so).

What each section counts, so an auditor can reproduce it:

* SOC 2 CC6.1: successful key uses (SIGN, VERIFY, ENCRYPT, DECRYPT, DERIVE,
  ENCAPSULATE, DECAPSULATE) per actor, key and operation in the period.
* SOC 2 CC7.2: every denied attempt; errors; and unusual usage by two plain
  rules: an actor with ``DENIAL_ALERT`` or more denials, and a day on which
  an actor used a key more than ``SPIKE_FACTOR`` times its median day (and
  at least ``SPIKE_MINIMUM`` times).
* SOC 2 CC8.1: creations, rotations, migrations, revocations, deletions and
  policy changes, with actor and reason.
* Rotation compliance: for each key still active at the period's end, its
  last rotation plus its schedule (the key's own, else the policy's for its
  usage, else qkms's default) must not be before the end of the period.
* GDPR Art. 30: keys by owner, purpose (usage) and environment; retention of
  the audit trail and backups from the policy.
* GDPR Art. 32: algorithms in use, rotation compliance, and PQC readiness:
  keys on quantum-vulnerable algorithms against ``pqcPolicy.migrationDeadline``.

Owner, usage and schedule come from the ``details`` of each key's CREATE or
IMPORT (and POLICY_CHANGE) entry; where an entry lacks them the report says
``unknown``.
"""

from __future__ import annotations

import html
import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qkms.model import durations
from qkms.model.schedules import DEFAULT_ROTATION

from .checkpoint import SignatureCheck
from .encoding import cid_str, decode, parse_time
from .verify import verify_folder

USE_OPERATIONS = frozenset({"SIGN", "VERIFY", "ENCRYPT", "DECRYPT", "DERIVE", "ENCAPSULATE",
                            "DECAPSULATE"})
CHANGE_OPERATIONS = frozenset({"CREATE", "IMPORT", "ROTATE", "MIGRATE", "REVOKE",
                               "SCHEDULE_DELETION", "CANCEL_DELETION", "POLICY_CHANGE",
                               "RELEASE", "EXPIRE"})
DENIAL_ALERT = 5
SPIKE_FACTOR = 3.0
SPIKE_MINIMUM = 20
STANDARDS = ("soc2", "gdpr")


class ReportError(Exception):
    """No report: the chain does not verify, or nothing signed covers it."""


@dataclass
class KeyFacts:
    name: str
    environment: str = "unknown"
    owner: str = "unknown"
    usage: str = "unknown"
    algorithm: str = "unknown"
    schedule: str | None = None
    created: datetime | None = None
    last_rotated: datetime | None = None
    ended: datetime | None = None  # revoked or scheduled for deletion
    rotations: int = 0
    current: str | None = None  # key ID of the version in use


@dataclass
class Source:
    """The verified chain a report is built from."""

    entries: list[dict[str, Any]]
    checkpoint: dict[str, Any] | None
    excluded_unsigned: int
    verified: int
    warnings: list[str] = field(default_factory=list)


def load(root: Path, *, check: SignatureCheck, public_key: bytes | None = None,
         allow_unsigned: bool = False) -> Source:
    """Verify the chain and return the entries its newest checkpoint covers."""
    entries: list[dict[str, Any]] = []

    def keep(seq: int, cid: bytes, block: bytes) -> None:
        value = decode(block)
        value["cid"] = cid_str(cid)
        value["moment"] = parse_time(value["time"])
        entries.append(value)

    result = verify_folder(root, check=check, public_key=public_key, on_entry=keep)
    if not result.ok:
        raise ReportError(f"the audit chain does not verify: {result.finding}")
    cp = result.last_checkpoint
    if cp is None and not allow_unsigned:
        raise ReportError("no signed checkpoint covers the chain yet (use --allow-unsigned "
                          "to report on hash-verified entries anyway)")
    limit = (result.last_seq or 0) if allow_unsigned or cp is None else cp.size
    covered = [e for e in entries if e["seq"] <= limit]
    checkpoint = cp.to_dict() if cp is not None else None
    return Source(covered, checkpoint, len(entries) - len(covered), result.entries,
                  result.warnings)


def _actor(entry: dict[str, Any]) -> str:
    return f"{entry['actor']['type']}:{entry['actor']['id']}"


def _key(entry: dict[str, Any]) -> str:
    return entry["keyName"] or entry["keyId"] or "-"


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def key_facts(entries: list[dict[str, Any]], until: datetime) -> dict[str, KeyFacts]:
    """What the chain says about each key up to ``until``."""
    keys: dict[str, KeyFacts] = {}
    for entry in entries:
        if entry["moment"] >= until or entry["result"] != "success" or not entry["keyName"]:
            continue
        facts = keys.setdefault(entry["keyName"], KeyFacts(entry["keyName"]))
        details, op = entry["details"], entry["operation"]
        if op in ("CREATE", "IMPORT"):
            facts.environment = entry["environment"]
            facts.owner = details.get("owner", facts.owner)
            facts.usage = details.get("usage", facts.usage)
            facts.algorithm = details.get("algorithm", facts.algorithm)
            facts.schedule = details.get("rotation_schedule", facts.schedule)
            facts.created = facts.last_rotated = entry["moment"]
            facts.current = entry["keyId"]
        elif op in ("ROTATE", "MIGRATE"):
            facts.last_rotated = entry["moment"]
            facts.current = entry["keyId"]
            facts.rotations += 1
            facts.algorithm = details.get("algorithm", facts.algorithm)
        elif op == "POLICY_CHANGE":
            facts.schedule = details.get("rotation_schedule", facts.schedule)
        elif op == "SCHEDULE_DELETION" or (
                op == "REVOKE" and entry["keyId"] in (None, facts.current)):
            facts.ended = entry["moment"]  # the whole key, not only an old version
        elif op == "CANCEL_DELETION":
            facts.ended = None
    return keys


def rotation_compliance(keys: dict[str, KeyFacts], until: datetime,
                        policy: Any = None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for facts in sorted(keys.values(), key=lambda k: k.name):
        if facts.ended is not None or facts.last_rotated is None:
            continue
        schedule = facts.schedule
        if schedule is None and facts.usage in DEFAULT_ROTATION:
            schedule = (policy.rotation_schedule.for_usage(_usage(facts.usage)) if policy
                        else DEFAULT_ROTATION[facts.usage])
        if schedule is None:
            rows.append({"key": facts.name, "schedule": "unknown",
                         "last_rotated": facts.last_rotated.isoformat(), "due": None,
                         "status": "unknown", "overdue_days": None})
            continue
        due = durations.add(facts.last_rotated, schedule)
        overdue = max(0.0, (until - due).total_seconds() / 86400)
        rows.append({"key": facts.name, "schedule": schedule,
                     "last_rotated": facts.last_rotated.isoformat(), "due": due.isoformat(),
                     "status": "compliant" if due >= until else "overdue",
                     "overdue_days": round(overdue, 1)})
    status = Counter(r["status"] for r in rows)
    return {"as_of": until.isoformat(), "keys": rows, "compliant": status["compliant"],
            "overdue": status["overdue"], "unknown": status["unknown"]}


def _usage(name: str) -> Any:
    from qkms.model.enums import Usage

    return Usage(name)


def soc2(entries: list[dict[str, Any]], since: datetime, until: datetime,
         policy: Any = None) -> dict[str, Any]:
    period = [e for e in entries if since <= e["moment"] < until]
    uses: dict[tuple[str, str, str], list[datetime]] = defaultdict(list)
    for e in period:
        if e["result"] == "success" and e["operation"] in USE_OPERATIONS:
            uses[(_actor(e), _key(e), e["operation"])].append(e["moment"])
    access = [{"actor": a, "key": k, "operation": o, "count": len(t),
               "first": min(t).isoformat(), "last": max(t).isoformat()}
              for (a, k, o), t in sorted(uses.items())]
    denied = [e for e in period if e["result"] == "denied"]
    by_actor = Counter(_actor(e) for e in denied)
    changes = [e for e in period
               if e["result"] == "success" and e["operation"] in CHANGE_OPERATIONS]
    return {
        "CC6.1": {"title": "Logical access: who used which key, and how often",
                  "total_uses": sum(r["count"] for r in access), "rows": access},
        "CC7.2": {"title": "Monitoring: denied attempts and unusual usage",
                  "denied_total": len(denied),
                  "error_total": sum(1 for e in period if e["result"] == "error"),
                  "denied_by_actor": [{"actor": a, "count": n}
                                      for a, n in sorted(by_actor.items())],
                  "denied": [_row(e) for e in denied],
                  "unusual": _unusual(period, by_actor)},
        "CC8.1": {"title": "Change management: rotations, revocations and other changes",
                  "counts": dict(sorted(Counter(e["operation"] for e in changes).items())),
                  "changes": [_row(e) for e in changes]},
        "rotation_compliance": rotation_compliance(key_facts(entries, until), until, policy),
    }


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    reason = entry["reason"] or entry["details"].get("reason")
    return {"seq": entry["seq"], "time": entry["time"], "actor": _actor(entry),
            "key": _key(entry), "operation": entry["operation"], "reason": reason,
            "cid": entry["cid"]}


def _unusual(period: list[dict[str, Any]], denials: Counter[str]) -> list[dict[str, Any]]:
    found = [{"rule": "repeated denials", "actor": a, "key": None,
              "detail": f"{n} denied attempts"}
             for a, n in sorted(denials.items()) if n >= DENIAL_ALERT]
    daily: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for e in period:
        if e["result"] == "success" and e["operation"] in USE_OPERATIONS:
            daily[(_actor(e), _key(e))][_day(e["moment"])] += 1
    for (actor, key), days in sorted(daily.items()):
        if len(days) < 2:
            continue
        median = statistics.median(days.values())
        for day, count in sorted(days.items()):
            if count >= SPIKE_MINIMUM and count > SPIKE_FACTOR * median:
                found.append({"rule": "usage spike", "actor": actor, "key": key,
                              "detail": f"{count} uses on {day} (median day {median:g})"})
    return found


def gdpr(entries: list[dict[str, Any]], since: datetime, until: datetime,
         policy: Any = None) -> dict[str, Any]:
    from qkms.model.algorithms import resolve_algorithm

    keys = key_facts(entries, until)
    live = [k for k in keys.values() if k.ended is None or k.ended >= since]
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for k in live:
        groups[(k.owner, k.usage, k.environment)].append(k.name)
    algorithms: Counter[str] = Counter(k.algorithm for k in live if k.ended is None)
    classes, vulnerable = {}, []
    for name in algorithms:
        try:
            info = resolve_algorithm(name)
        except Exception:  # an algorithm this build does not know: say so
            classes[name] = "unknown"
            continue
        classes[name] = ("hybrid" if info.hybrid else "post-quantum" if info.post_quantum
                         else "symmetric" if info.symmetric else "classical")
        if info.quantum_vulnerable:
            vulnerable += [k.name for k in live if k.algorithm == name and k.ended is None]
    audit = policy.audit_policy if policy else None
    deadline = policy.pqc_policy.migration_deadline if policy else None
    return {
        "Art. 30": {
            "title": "Records of processing: keys by owner, purpose and environment",
            "keys": [{"owner": o, "purpose": u, "environment": env, "count": len(names),
                      "keys": sorted(names)} for (o, u, env), names in sorted(groups.items())],
            "retention": {"audit_trail": audit.retention_period if audit else "P7Y",
                          "backups": policy.backup_policy.retention_period if policy else "P7Y",
                          "deletion_window": policy.deletion_window if policy else "P30D"}},
        "Art. 32": {
            "title": "Security of processing: algorithms, rotation and PQC readiness",
            "algorithms": [{"algorithm": a, "class": classes[a], "keys": n}
                           for a, n in sorted(algorithms.items())],
            "rotation_compliance": rotation_compliance(keys, until, policy),
            "pqc_readiness": _pqc(sorted(vulnerable), deadline, until)},
    }


def _pqc(vulnerable: list[str], deadline: datetime | None, until: datetime) -> dict[str, Any]:
    if not vulnerable:
        status = "ready"
    elif deadline is None:
        status = "no deadline set"
    else:
        status = "overdue" if deadline < until else "migration pending"
    days = round((deadline - until).total_seconds() / 86400, 1) if deadline else None
    return {"migration_deadline": deadline.isoformat() if deadline else None,
            "days_to_deadline": days, "quantum_vulnerable_keys": vulnerable, "status": status}


def build(root: Path, standard: str, since: datetime | None = None,
          until: datetime | None = None, *, check: SignatureCheck, policy: Any = None,
          public_key: bytes | None = None, allow_unsigned: bool = False,
          now: datetime | None = None) -> dict[str, Any]:
    """The report as a dict (the JSON format); ``render`` turns it into md or html."""
    if standard not in STANDARDS:
        raise ReportError(f"unknown standard {standard!r}: use soc2 or gdpr")
    source = load(root, check=check, public_key=public_key, allow_unsigned=allow_unsigned)
    now = now or datetime.now(UTC)
    since = since or datetime(1970, 1, 1, tzinfo=UTC)
    until = until or now
    spec = getattr(policy, "spec", policy)
    sections = (soc2 if standard == "soc2" else gdpr)(source.entries, since, until, spec)
    in_period = sum(1 for e in source.entries if since <= e["moment"] < until)
    return {
        "standard": "SOC 2" if standard == "soc2" else "GDPR",
        "period": {"since": since.isoformat(), "until": until.isoformat()},
        "built_from": {"checkpoint": source.checkpoint,
                       "entries_verified": source.verified,
                       "entries_covered": len(source.entries),
                       "entries_excluded_unsigned": source.excluded_unsigned,
                       "warnings": source.warnings},
        "entries_in_period": in_period,
        "generated_at": now.isoformat(),
        "sections": sections,
    }


# -- rendering -----------------------------------------------------------------------------

def _blocks(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """Headings, paragraphs and tables: one layout for markdown and HTML."""
    cp = report["built_from"]["checkpoint"]
    source = (f"Built from checkpoint {cp['cid']} (size {cp['size']}, signed by "
              f"{cp['key_id']} at {cp['time']})" if cp else
              "Built from hash-verified entries without a signed checkpoint")
    out: list[tuple[str, Any]] = [
        ("h1", f"{report['standard']} audit report"),
        ("p", f"Period {report['period']['since']} to {report['period']['until']}; "
              f"{report['entries_in_period']} entries in the period."),
        ("p", f"{source}; {report['built_from']['entries_excluded_unsigned']} newer unsigned "
              "entries left out."),
    ]
    for name, section in report["sections"].items():
        out.append(("h2", f"{name}: {section.get('title', name.replace('_', ' '))}"))
        for key, value in section.items():
            if key == "title":
                continue
            if isinstance(value, list) and value and isinstance(value[0], dict):
                out.append(("h3", key.replace("_", " ")))
                heads = list(value[0])
                out.append(("table", (heads, [[_cell(r.get(h)) for h in heads] for r in value])))
            elif isinstance(value, dict) and value and all(
                    isinstance(v, list | dict) for v in value.values()):
                out.append(("h3", key.replace("_", " ")))
                for sub, item in value.items():
                    if isinstance(item, list) and item and isinstance(item[0], dict):
                        heads = list(item[0])
                        out.append(("table", (heads, [[_cell(r.get(h)) for h in heads]
                                                      for r in item])))
                    else:
                        out.append(("p", f"{sub.replace('_', ' ')}: {_cell(item)}"))
            else:
                text = _cell(value) if value != [] else "none"
                out.append(("p", f"{key.replace('_', ' ')}: {text}"))
    return out


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, default=str) + "\n"
    blocks = _blocks(report)
    if fmt == "md":
        return _markdown(blocks)
    if fmt == "html":
        return _html(blocks, report["standard"])
    raise ReportError(f"unknown format {fmt!r}: use md, json or html")


def _markdown(blocks: list[tuple[str, Any]]) -> str:
    lines = []
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + body, ""]
        elif kind == "p":
            lines += [body, ""]
        else:
            heads, rows = body
            lines.append("| " + " | ".join(heads) + " |")
            lines.append("|" + "---|" * len(heads))
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                      for row in rows]
            lines.append("")
    return "\n".join(lines)


def _html(blocks: list[tuple[str, Any]], title: str) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)} audit "
             "report</title></head><body>"]
    for kind, body in blocks:
        if kind == "table":
            heads, rows = body
            parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                      for row in rows]
            parts.append("</table>")
        else:
            parts.append(f"<{kind}>{esc(body)}</{kind}>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

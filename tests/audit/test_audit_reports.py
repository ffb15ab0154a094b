"""Reports from a known scripted history (tests/audit/fixtures/report_history.yaml)
against the figures counted by hand in the same file."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from qkms.audit.chain import AuditChain
from qkms.audit.encoding import encode
from qkms.audit.entry import Actor, AuditEntry
from qkms.audit.reports import ReportError, build, render
from qkms.crypto import verify_signature
from qkms.model.policy import parse_key_policy
from tests.audit.helpers import AuditKey, make_entry, segment_records, write_segment

SCRIPT = yaml.safe_load((Path(__file__).parent / "fixtures/report_history.yaml").read_text())
EXPECTED = SCRIPT["expected"]


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def history() -> list[AuditEntry]:
    start, entries = moment(SCRIPT["start"]), []
    for step in SCRIPT["steps"]:
        for n in range(step.get("repeat", 1)):
            actor_type, actor_id = step["actor"].split(":", 1)
            at = start + timedelta(days=step["day"] + n * step.get("every", 0), seconds=n)
            entries.append(AuditEntry(
                time=at, environment=SCRIPT["environment"], operation=step["op"],
                result=step.get("result", "success"), actor=Actor(actor_type, actor_id),
                key_name=step["key"], key_id=step.get("key_id"), version=1,
                reason=step.get("reason"), details=step.get("details", {})))
    return sorted(entries, key=lambda e: e.time)


def policy():
    text = files("qkms.examples").joinpath("keypolicy-prod.yaml").read_text()
    return parse_key_policy(yaml.safe_load(text))


@pytest.fixture
async def folder(tmp_path):
    async with AuditChain(tmp_path, signer=AuditKey(), checkpoint_every=25) as chain:
        for entry in history():
            await chain.append(entry)
    return tmp_path


def period():
    return moment(SCRIPT["period"]["since"]), moment(SCRIPT["period"]["until"])


async def test_soc2_figures(folder):
    report = build(folder, "soc2", *period(), policy=policy(), check=verify_signature)
    want = EXPECTED["soc2"]
    s = report["sections"]
    assert report["entries_in_period"] == EXPECTED["entries_in_period"]
    assert s["CC6.1"]["total_uses"] == want["total_uses"]
    assert [{k: r[k] for k in ("actor", "key", "operation", "count")}
            for r in s["CC6.1"]["rows"]] == want["uses"]
    assert s["CC7.2"]["denied_total"] == want["denied_total"]
    assert s["CC7.2"]["error_total"] == want["error_total"]
    assert s["CC7.2"]["denied_by_actor"] == want["denied_by_actor"]
    assert [{k: u[k] for k in w} for u, w in zip(s["CC7.2"]["unusual"], want["unusual"],
                                                 strict=True)] == want["unusual"]
    assert s["CC8.1"]["counts"] == want["changes"]
    rotation = s["rotation_compliance"]
    assert {k: rotation[k] for k in want["rotation"]} == want["rotation"]
    assert {r["key"]: r["overdue_days"] for r in rotation["keys"]
            if r["status"] == "overdue"} == want["overdue"]


async def test_gdpr_figures(folder):
    report = build(folder, "gdpr", *period(), policy=policy(), check=verify_signature)
    want = EXPECTED["gdpr"]
    art30, art32 = report["sections"]["Art. 30"], report["sections"]["Art. 32"]
    assert [{k: g[k] for k in ("owner", "purpose", "environment", "keys")}
            for g in art30["keys"]] == want["art30"]
    assert art30["retention"] == want["retention"]
    assert art32["algorithms"] == want["algorithms"]
    pqc = art32["pqc_readiness"]
    assert (pqc["status"], pqc["migration_deadline"], pqc["quantum_vulnerable_keys"]) == (
        want["pqc"]["status"], want["pqc"]["deadline"], want["pqc"]["vulnerable"])


async def test_reports_name_their_checkpoint_in_every_format(folder):
    report = build(folder, "soc2", *period(), check=verify_signature)
    cid = report["built_from"]["checkpoint"]["cid"]
    assert report["built_from"]["checkpoint"]["size"] == len(history())
    for fmt in ("md", "json", "html"):
        text = render(report, fmt)
        assert cid in text
    assert json.loads(render(report, "json"))["standard"] == "SOC 2"
    assert render(report, "html").startswith("<!doctype html>")
    assert "| actor | key | operation | count |" in render(report, "md")


async def test_only_signed_entries_are_reported(folder):
    async with AuditChain(folder) as chain:  # no signer: these stay unsigned
        for i in range(3):
            await chain.append(make_entry(i))
    report = build(folder, "soc2", check=verify_signature)
    assert report["built_from"]["entries_excluded_unsigned"] == 3
    assert build(folder, "soc2", allow_unsigned=True, check=verify_signature)["built_from"][
        "entries_excluded_unsigned"] == 0


async def test_no_report_from_a_chain_that_does_not_verify(folder):
    records = segment_records(folder)
    block = encode({"seq": 3, "note": "forged"})
    records[2] = (records[2].cid, block)
    write_segment(folder, records)
    with pytest.raises(ReportError, match="does not verify: entry 3"):
        build(folder, "gdpr", check=verify_signature)


async def test_no_report_without_a_checkpoint(tmp_path):
    async with AuditChain(tmp_path) as chain:
        await chain.append(make_entry())
    with pytest.raises(ReportError, match="no signed checkpoint"):
        build(tmp_path, "soc2", check=verify_signature)
    built = build(tmp_path, "soc2", allow_unsigned=True, check=verify_signature)
    assert built["built_from"]["checkpoint"] is None

"""``qkms audit`` verify, export, search, report and prune, through argparse as the
``qkms`` command wires them (``add_parser`` + ``run``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from qkms.audit.cli import add_parser, run
from qkms.audit.encoding import cid_str, decode, encode, is_entry
from qkms.crypto import verify_signature
from tests.audit.helpers import AuditKey, filled, make_entry, segment_records, write_segment


async def qkms_audit(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="qkms")
    parser.add_argument("--data-dir", type=Path)  # as the qkms command has it
    add_parser(parser.add_subparsers(dest="group", required=True))
    return await run(parser.parse_args(list(argv)), verify_signature)


@pytest.fixture(autouse=True)
def no_env_data_dir(monkeypatch):
    monkeypatch.delenv("QKMS_DATA_DIR", raising=False)


@pytest.fixture
async def data_dir(tmp_path):
    """A qkms data dir whose audit folder holds 30 entries, signed every 10."""
    from qkms.audit.chain import AuditChain

    async with AuditChain(tmp_path / "data" / "audit", signer=AuditKey(),
                          checkpoint_every=10) as chain:
        for i in range(30):
            result = "denied" if i % 10 == 9 else "success"
            operation = "ROTATE" if i == 20 else "SIGN"
            await chain.append(make_entry(i, result=result, operation=operation,
                                          key_name="orders" if i < 5 else "payments-signing"))
    return tmp_path / "data"


async def test_verify_exits_0_with_the_count(data_dir, capsys):
    assert await qkms_audit("audit", "verify", "--data-dir", str(data_dir)) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK 30 entries (seq 1..30)") and "sha256:" in out
    assert await qkms_audit("--data-dir", str(data_dir / "audit"), "audit", "verify") == 0


async def test_verify_names_the_first_bad_entry(data_dir, capsys):
    records = segment_records(data_dir / "audit")
    value = decode(records[4].block)
    value["operation"] = "DECRYPT"
    records[4] = (records[4].cid, encode(value))
    write_segment(data_dir / "audit", records)
    assert await qkms_audit("audit", "verify", "--data-dir", str(data_dir)) == 1
    out = capsys.readouterr().out
    assert f"FAILED: entry 5 ({cid_str(records[4][0])}): edited:" in out
    assert await qkms_audit("audit", "verify", "--json", "--data-dir", str(data_dir)) == 1
    finding = json.loads(capsys.readouterr().out)["finding"]
    assert (finding["kind"], finding["seq"]) == ("edited", 5)


async def test_export_then_verify_the_car_alone_and_against_the_data_dir(data_dir, tmp_path,
                                                                        capsys):
    car = tmp_path / "audit.car"
    assert await qkms_audit("audit", "export", "--car", str(car), "--data-dir",
                            str(data_dir)) == 0
    assert "exported 30 entries" in capsys.readouterr().err
    assert await qkms_audit("audit", "verify", "--car", str(car)) == 0
    assert capsys.readouterr().out.startswith("OK 30 entries")
    assert await qkms_audit("audit", "verify", "--car", str(car), "--data-dir",
                            str(data_dir)) == 0
    assert "CAR matches: 30 entries" in capsys.readouterr().out
    # the data dir loses its tail: the CAR proves it had more
    records = segment_records(data_dir / "audit")
    write_segment(data_dir / "audit", records[:20])
    (data_dir / "audit" / "checkpoints.qlog").unlink()
    assert await qkms_audit("audit", "verify", "--car", str(car), "--data-dir",
                            str(data_dir)) == 1
    assert "FAILED: entry 20 " in capsys.readouterr().out


async def test_export_a_range(data_dir, tmp_path, capsys):
    car = tmp_path / "range.car"
    assert await qkms_audit("audit", "export", "--car", str(car), "--from", "11", "--to", "15",
                            "--data-dir", str(data_dir)) == 0
    assert "exported 5 entries (seq 11..15)" in capsys.readouterr().err
    assert await qkms_audit("audit", "verify", "--car", str(car)) == 0
    assert "OK 5 entries (seq 11..15)" in capsys.readouterr().out


async def test_search_streams_json_lines(data_dir, capsys):
    async def found(*filters: str) -> list[dict]:
        assert await qkms_audit("audit", "search", "--data-dir", str(data_dir), *filters) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert len(await found()) == 30
    assert [e["seq"] for e in await found("--result", "denied")] == [10, 20, 30]
    assert [e["seq"] for e in await found("--key", "orders")] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in await found("--operation", "rotate")] == [21]
    assert len(await found("--actor", "SERVICE_ACCOUNT:system:serviceaccount:pay:api")) == 30
    assert len(await found("--actor", "nobody")) == 0
    since = await found("--since", "2026-01-05T09:00:10Z", "--until", "2026-01-05T09:00:12")
    assert [e["seq"] for e in since] == [11, 12]
    entry = since[0]
    assert entry["cid"].startswith("bafyrei") and entry["prev"].startswith("bafyrei")


async def test_report_formats(data_dir, tmp_path, capsys):
    assert await qkms_audit("audit", "report", "--standard", "soc2", "--format", "json",
                            "--data-dir", str(data_dir)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sections"]["CC7.2"]["denied_total"] == 3
    out = tmp_path / "gdpr.html"
    assert await qkms_audit("audit", "report", "--standard", "gdpr", "--format", "html",
                            "--out", str(out), "--data-dir", str(data_dir)) == 0
    assert report["built_from"]["checkpoint"]["cid"] in out.read_text()


async def test_report_refuses_a_broken_chain(data_dir, capsys):
    records = [r for r in segment_records(data_dir / "audit")
               if not (is_entry(r.block) and decode(r.block)["seq"] == 7)]
    write_segment(data_dir / "audit", records)
    assert await qkms_audit("audit", "report", "--standard", "soc2",
                            "--data-dir", str(data_dir)) == 1
    assert "does not verify: entry 7" in capsys.readouterr().err


async def test_pinning_the_key(data_dir, tmp_path, capsys):
    key = tmp_path / "audit.pub"
    assert await qkms_audit("audit", "verify", "--save-key", str(key),
                            "--data-dir", str(data_dir)) == 0
    assert await qkms_audit("audit", "verify", "--public-key", str(key),
                            "--data-dir", str(data_dir)) == 0
    key.write_bytes(AuditKey("someone-else").public)
    assert await qkms_audit("audit", "verify", "--public-key", str(key),
                            "--data-dir", str(data_dir)) == 1
    assert "key-changed" in capsys.readouterr().out


async def test_prune_dry_run_and_bad_input(data_dir, tmp_path, capsys):
    assert await qkms_audit("audit", "prune", "--dry-run", "--data-dir", str(data_dir)) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == []
    assert await qkms_audit("audit", "verify", "--data-dir", str(tmp_path / "nothing")) == 2
    assert "no audit log" in capsys.readouterr().err
    await filled(tmp_path / "x", 1)
    assert await qkms_audit("audit", "search", "--since", "yesterday",
                            "--data-dir", str(tmp_path / "x")) == 2


async def test_search_by_input_finds_the_entries_that_handled_it(tmp_path, capsys):
    """``audit search --input FILE`` (issue 14, item 2): the entries hold only keyed
    digests, so the command finds a known input's entries with the store's MAC keys, and
    a guess that was never signed finds nothing."""
    from qkms.config import Settings
    from qkms.service import KeyManagementService

    svc = KeyManagementService(Settings(data_dir=tmp_path / "data"))
    key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="pin")
    for pin in (b"1234", b"5678", b"1234"):
        await svc.use_key(key.key_id, "SIGN", pin)
    await svc.close()
    for guess, found in ((b"1234", 2), (b"5678", 1), (b"0000", 0)):
        (tmp_path / "guess").write_bytes(guess)
        assert await qkms_audit("audit", "search", "--data-dir", str(tmp_path / "data"),
                                "--input", str(tmp_path / "guess")) == 0
        entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(e["operation"], e["key_id"]) for e in entries] == [("SIGN", key.key_id)] * found
        assert b"1234".hex() not in json.dumps(entries)

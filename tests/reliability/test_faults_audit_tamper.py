"""Audit-chain tampering, as ``qkms audit verify`` reports it (the cases of the audit issue).

A real chain is written by a prod ``KeyManagementService`` (its own hybrid checkpoint key,
a signed checkpoint every 10 entries). Each case tampers with a copy of the folder the
way someone with file access could, then runs ``qkms audit verify --data-dir COPY``: the
untouched copy exits 0, every tampered one exits 1 naming the first bad entry and what is
wrong. ``tests/audit/test_audit_verify.py`` checks each case in depth (finding kind,
sequence number and CID); this module prints the table row for each.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from qkms import cli
from qkms.audit import encoding
from qkms.audit.encoding import cid_raw, decode, encode, is_entry
from qkms.audit.store import CHECKPOINTS, Record
from qkms.config import AuditOptions, Settings
from qkms.model.enums import Environment
from qkms.service import KeyManagementService
from tests.audit.helpers import AuditKey, make_entry, segment_records, write_segment

K = 15  # the entry tampered with

Tamper = Callable[[Path], list[str]]  # edits the folder, returns extra CLI arguments


def _records(folder: Path) -> tuple[list[Record | tuple[bytes, bytes]], dict[int, int]]:
    records: list[Record | tuple[bytes, bytes]] = list(segment_records(folder))
    index = {decode(r.block)["seq"]: i for i, r in enumerate(records)  # type: ignore[union-attr]
             if is_entry(r.block)}  # type: ignore[union-attr]
    return records, index


def bit_flip(folder: Path) -> list[str]:
    records, index = _records(folder)
    record = records[index[K]]
    assert isinstance(record, Record)
    block = bytearray(record.block)
    block[len(block) // 2] ^= 0x01
    records[index[K]] = (record.cid, bytes(block))
    write_segment(folder, records)
    return []


def edited_readdressed(folder: Path) -> list[str]:
    records, index = _records(folder)
    record = records[index[K]]
    assert isinstance(record, Record)
    value = decode(record.block)
    value["result"] = "denied" if value["result"] == "success" else "success"
    block = encode(value)
    records[index[K]] = (cid_raw(block), block)
    write_segment(folder, records)
    return []


def deleted(folder: Path) -> list[str]:
    records, index = _records(folder)
    del records[index[K]]
    write_segment(folder, records)
    return []


def reordered(folder: Path) -> list[str]:
    records, index = _records(folder)
    i, j = index[K], index[K + 1]
    records[i], records[j] = records[j], records[i]
    write_segment(folder, records)
    return []


def forked(folder: Path) -> list[str]:
    records, index = _records(folder)
    previous = records[index[K]]
    assert isinstance(previous, Record)
    fork = encoding.encode_entry(make_entry(500, operation="DECRYPT"), K + 1, previous.cid)
    records.insert(index[K + 1] + 1, (cid_raw(fork), fork))
    write_segment(folder, records)
    return []


def truncated_tail(folder: Path) -> list[str]:
    records, index = _records(folder)
    write_segment(folder, records[:index[max(index)]])
    return []


def truncated_after_checkpoint(folder: Path) -> list[str]:
    records, _ = _records(folder)
    cut = next(i for i, r in enumerate(records)
               if isinstance(r, Record) and not is_entry(r.block) and decode(r.block)["size"] == 20)
    write_segment(folder, records[:cut + 1])
    return []


def forged_checkpoint(folder: Path) -> list[str]:
    records, _ = _records(folder)
    i = next(i for i, r in enumerate(records) if isinstance(r, Record) and not is_entry(r.block))
    record = records[i]
    assert isinstance(record, Record)
    value = decode(record.block)
    value["signature"] = bytes(len(value["signature"]))
    block = encode(value)
    records[i] = (cid_raw(block), block)
    write_segment(folder, records)
    (folder / CHECKPOINTS).unlink()  # so the log's copy is the one checked first
    return []


def other_pinned_key(folder: Path) -> list[str]:
    key = folder.parent / "other.key"
    key.write_bytes(AuditKey("other").public)
    return ["--public-key", str(key)]


CASES: dict[str, tuple[Tamper | None, str]] = {
    "untouched": (None, "verifies"),
    f"byte flipped in entry {K}": (bit_flip, "edited"),
    f"entry {K} edited and re-addressed": (edited_readdressed, "edited"),
    f"entry {K} deleted": (deleted, "missing"),
    f"entries {K} and {K + 1} swapped": (reordered, "reordered"),
    f"second entry {K + 1} forked off {K}": (forked, "forked"),
    "last entry cut off": (truncated_tail, "truncated"),
    "log cut after checkpoint 20": (truncated_after_checkpoint, "truncated"),
    "checkpoint signature forged": (forged_checkpoint, "bad-signature"),
    "verified against another pinned key": (other_pinned_key, "key-changed"),
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real chain: 30-odd entries of a prod service, checkpoints every 10."""
    import asyncio

    data = tmp_path_factory.mktemp("audit-source") / "data"

    async def fill() -> None:
        svc = KeyManagementService(Settings(environment=Environment.PROD, data_dir=data,
                                            audit=AuditOptions(checkpoint_every=10)))
        key = await svc.create_key(usage="SIGNING", algorithm="Ed25519", owner="app")
        for i in range(30):
            await svc.use_key(key.key_id, "SIGN", f"message {i}".encode())
        await svc.close()
    asyncio.run(fill())
    return data / "audit"


def verify(folder: Path, extra: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["audit", "verify", "--data-dir", str(folder), *extra])
    return code, (out.getvalue() + err.getvalue()).strip().splitlines()[-1]


@pytest.mark.parametrize("case", list(CASES))
def test_tampering_is_named_by_qkms_audit_verify(case: str, chain: Path,
                                                  tmp_path: Path) -> None:
    tamper, expected = CASES[case]
    folder = tmp_path / "audit"
    shutil.copytree(chain, folder)
    extra = tamper(folder) if tamper else []
    code, line = verify(folder, extra)
    ok = (code == 0) if tamper is None else (code == 1 and expected in line)
    print(f"FIGURE audit-tamper: {case} -> exit {code}: {line} "
          f"(expected {expected}) {'PASS' if ok else 'FAIL'}")
    assert ok, line

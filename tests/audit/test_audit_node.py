"""Cross-check with an independent IPLD implementation: JavaScript, in Node.

``tests/audit/node`` is a test-only npm project (``@ipld/car``, ``@ipld/dag-cbor``,
``multiformats``, ``helia``, ``@helia/car``).  Its ``node_modules`` is installed
with ``npm ci`` from the committed lock file into a cache folder outside the
work tree (``$QKMS_NODE_CACHE``, default ``~/.cache/qkms``), keyed by the lock
file, so it is installed once per machine.  ``check_car.mjs`` reads our CAR,
recomputes every CID from the block bytes, re-encodes every decoded block to
check it is canonical, imports the CAR into an offline Helia blockstore and
resolves every CID there.  Without node or npm (or the registry) the tests
skip, and fail under ``QKMS_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qkms.audit.car import export_car, verify_car
from qkms.audit.encoding import cid_str, decode
from qkms.audit.store import iter_log
from qkms.crypto import verify_signature
from tests.audit.helpers import AuditKey, filled, make_entry
from tests.support.servers import require_server

NODE_PROJECT = Path(__file__).parent / "node"
FILES = ("package.json", "package-lock.json")


@pytest.fixture(scope="session")
def node_check():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        require_server("node", "node and npm are needed for the JavaScript IPLD cross-check")
    digest = hashlib.sha256(b"".join((NODE_PROJECT / f).read_bytes() for f in FILES)).hexdigest()
    base = Path(os.environ.get("QKMS_NODE_CACHE") or Path.home() / ".cache" / "qkms")
    cache = base / f"audit-node-{digest[:16]}"
    marker = cache / "node_modules" / ".qkms-installed"
    if not marker.exists():
        cache.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copy(NODE_PROJECT / name, cache / name)
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=cache, capture_output=True, text=True, timeout=280)
        if proc.returncode != 0:
            require_server("npm packages", f"npm ci failed: {proc.stderr[-500:]}")
        marker.touch()
    shutil.copy(NODE_PROJECT / "check_car.mjs", cache / "check_car.mjs")

    def check(car: Path) -> dict:
        proc = subprocess.run([node, str(cache / "check_car.mjs"), str(car)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    return check


@pytest.fixture
async def chain_dir(tmp_path):
    folder = tmp_path / "audit"
    await filled(folder, 30, signer=AuditKey(), checkpoint_every=10)
    from qkms.audit.chain import AuditChain

    async with AuditChain(folder, signer=AuditKey(), checkpoint_every=10) as chain:
        await chain.append(make_entry(30, reason="é ü — 鍵", result="denied", key_id=None,
                                      version=None, details={"code": "key_state"}, digests={}))
        await chain.append(make_entry(31, operation="ROTATE", details={"old_key_id": "k1"}))
    return folder


def python_view(folder: Path) -> dict[str, dict]:
    view = {}
    for record in iter_log(folder):
        value = decode(record.block)
        view[cid_str(record.cid)] = value
    return view


async def test_node_recomputes_every_cid_and_helia_resolves_them(chain_dir, tmp_path, node_check):
    car = tmp_path / "chain.car"
    with open(car, "wb") as out:
        exported = export_car(chain_dir, out)
    assert verify_car(car, check=verify_signature).ok
    report = node_check(car)
    ours = python_view(chain_dir)
    assert report["roots"] == exported.roots
    assert {b["cid"] for b in report["blocks"]} == set(ours)
    for block in report["blocks"]:
        assert block["recomputed"] == block["cid"] and block["canonical"], block
        value = ours[block["cid"]]
        if block["type"] == "entry":
            assert (block["seq"], block["operation"]) == (value["seq"], value["operation"])
            assert block["prev"] == (str(value["prev"]) if value["prev"] else None)
        else:
            assert (block["size"], block["head"]) == (value["size"], str(value["head"]))
    assert len(report["blocks"]) == 32 + 4
    assert report["helia"] == {"skipped": False, "resolved": 36, "mismatched": []}


async def test_a_range_export_is_anchored_and_checks_in_node(chain_dir, tmp_path, node_check):
    car = tmp_path / "range.car"
    with open(car, "wb") as out:
        exported = export_car(chain_dir, out, first=11, last=20)
    assert (exported.entries, exported.first_seq, exported.last_seq) == (10, 11, 20)
    result = verify_car(car, check=verify_signature)
    assert result.ok and result.anchor.size == 10 and result.entries == 10
    report = node_check(car)
    assert all(b["recomputed"] == b["cid"] for b in report["blocks"])
    seqs = sorted(b["seq"] for b in report["blocks"] if b["type"] == "entry")
    assert seqs == list(range(11, 21))
    assert sorted(b["size"] for b in report["blocks"] if b["type"] != "entry") == [10, 20]

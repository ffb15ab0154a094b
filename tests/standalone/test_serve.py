"""Standalone mode: manifests in a folder, projections as files, the same reconcile code."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from qkms.config import Settings
from qkms.service import KeyManagementService
from qkms.standalone import Standalone

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def runner(tmp_path, folder, clock, lines):
    return Standalone(Settings(data_dir=tmp_path / "data"), folder, tmp_path / "out",
                      say=lines.append, clock=clock)


async def test_examples_become_ready_with_verifiable_projections(tmp_path, clock) -> None:
    lines: list[str] = []
    sa = runner(tmp_path, EXAMPLES, clock, lines)
    sa.refresh()
    await sa.reconcile_all()
    assert sa.manifests.errors == []
    statuses = {p.stem: json.loads(p.read_text())
                for p in (tmp_path / "out" / "status" / "payments").glob("*.json")}
    assert len(statuses) == 5 and all(s["phase"] == "Ready" for s in statuses.values())
    pem = (tmp_path / "out/payments/user-service-signing-public/public.pem").read_bytes()
    service = sa.registry.get(sa.registry.settings.environment)
    sig = await service.use_key("payments/user-service-signing", "SIGN", b"projected")
    load_pem_public_key(pem).verify(sig.signature, b"projected")  # raises if wrong
    ref = tmp_path / "out/payments/storage-encryption-ref"
    assert sorted(p.name for p in ref.iterdir()) == [
        "algorithm", "key-id", "key-name", "next-rotation", "version"]
    assert sum("KeyCreated" in line for line in lines) == 5


async def test_folder_changes_are_picked_up_and_removal_finalizes(tmp_path, clock) -> None:
    folder = tmp_path / "manifests"
    shutil.copytree(EXAMPLES, folder)
    lines: list[str] = []
    sa = runner(tmp_path, folder, clock, lines)
    sa.refresh()
    await sa.reconcile_all()
    path = folder / "managedkey-ed25519-signing.yaml"
    path.write_text(path.read_text().replace("rotationSchedule: P30D", "rotationSchedule: PT5S"))
    assert sa.refresh()
    await sa.reconcile_all()
    clock.advance(seconds=5)
    await sa.reconcile_all()
    assert any("KeyRotated payments/user-service-signing" in line for line in lines)
    path.unlink()
    assert sa.refresh()
    await sa.reconcile_all()
    assert any("KeyReleased payments/user-service-signing" in line for line in lines)


async def test_bad_files_are_named_and_other_keys_still_served(tmp_path, clock) -> None:
    folder = tmp_path / "manifests"
    shutil.copytree(EXAMPLES, folder)
    (folder / "broken.yaml").write_text("kind: ManagedKey\nspec: [unclosed\n")
    dup = (folder / "managedkey-aes-256-gcm.yaml").read_text()
    (folder / "zz-duplicate.yaml").write_text(dup)
    (folder / "bad-spec.yaml").write_text(
        dup.replace("storage-encryption", "bad").replace("rotationSchedule", "x")
        .replace("usage: ENCRYPTION", "usage: ENCRYPTION\n  rotationSchedule: P3X"))
    lines: list[str] = []
    sa = runner(tmp_path, folder, clock, lines)
    sa.refresh()
    await sa.reconcile_all()
    errors = "\n".join(sa.manifests.errors)
    assert "broken.yaml: malformed YAML" in errors
    assert "zz-duplicate.yaml: duplicate ManagedKey payments/storage-encryption" in errors
    assert "bad-spec.yaml: ManagedKey bad: spec.rotationSchedule" in errors
    assert len(sa.manifests.keys) == 5


async def test_restart_resumes_without_duplicates(tmp_path, clock) -> None:
    first = runner(tmp_path, EXAMPLES, clock, [])
    first.refresh()
    await first.reconcile_all()
    key_ids = {k: s.key_id for k, s in first.statuses.items()}
    lines: list[str] = []
    second = runner(tmp_path, EXAMPLES, clock, lines)
    second.refresh()
    await second.reconcile_all()
    assert {k: s.key_id for k, s in second.statuses.items()} == key_ids
    assert not any("KeyCreated" in line for line in lines)


def test_serve_stops_cleanly_on_ctrl_c(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"),
           "QKMS_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, "-m", "qkms", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.count("KeyCreated") and len([x for x in seen if "KeyCreated" in x]) == 5:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(seen) + out
    assert "serving the bundled examples" in seen[0]
    assert "qkms serve: stopped" in out


async def test_same_store_serves_cli_and_standalone(tmp_path, clock) -> None:
    sa = runner(tmp_path, EXAMPLES, clock, [])
    sa.refresh()
    await sa.reconcile_all()
    cli = KeyManagementService(sa.registry.settings_for(sa.registry.settings.environment, None))
    assert await cli.get_key("payments/release-signing")
    await asyncio.sleep(0)

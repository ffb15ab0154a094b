"""qkms serve's output folder and names under attack (issue 14 item 10)."""

from __future__ import annotations

import shutil
from pathlib import Path

from qkms.config import Settings
from qkms.model.managed_key import parse_managed_key
from qkms.standalone import Standalone, load_manifests

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
KEY = """
apiVersion: qkms.io/v1alpha1
kind: ManagedKey
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  usage: SIGNING
  algorithm: Ed25519
  owner: team
  projection: {{secretName: {secret}, formats: [PEM]}}
"""


def runner(tmp_path: Path, folder: Path, clock, lines: list[str]) -> Standalone:
    return Standalone(Settings(data_dir=tmp_path / "data"), folder, tmp_path / "out",
                      say=lines.append, clock=clock)


async def test_a_symlink_inside_out_is_never_followed(tmp_path, clock) -> None:
    """A link planted in --out (a projection folder, or a projection file) once sent
    qkms's writes (and reads) to wherever it pointed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "public.pem").write_text("precious\n")
    folder = tmp_path / "manifests"
    shutil.copytree(EXAMPLES, folder)
    out = tmp_path / "out" / "payments"
    out.mkdir(parents=True)
    (out / "user-service-signing-public").symlink_to(outside, target_is_directory=True)
    lines: list[str] = []
    sa = runner(tmp_path, folder, clock, lines)
    sa.refresh()
    await sa.reconcile_all()
    assert (outside / "public.pem").read_text() == "precious\n"
    assert sorted(p.name for p in outside.iterdir()) == ["public.pem"]
    assert any("user-service-signing" in line and "symbolic link" in line for line in lines)
    # A link where a projection file belongs is replaced by the file, its target untouched.
    (out / "user-service-signing-public").unlink()
    target = out / "user-service-signing-public"
    target.mkdir()
    (target / "public.pem").symlink_to(outside / "public.pem")
    await sa.reconcile_all()
    assert not (target / "public.pem").is_symlink()
    assert (target / "public.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert (outside / "public.pem").read_text() == "precious\n"


async def test_a_namespace_named_status_cannot_write_among_statuses(tmp_path, clock) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "keys.yaml").write_text(
        KEY.format(name="victim", namespace="payments", secret="victim-public") + "---\n"
        + KEY.format(name="attacker", namespace="status", secret="payments"))
    found = load_manifests(folder)
    assert [k.name for k in found.keys] == ["victim"]
    assert any("metadata.namespace" in e and "'status'" in e for e in found.errors)


def test_names_with_a_trailing_newline_are_refused() -> None:
    """re.match(...$) accepted 'name\\n' everywhere a name was validated."""
    import pytest

    from qkms.errors import InvalidInputError
    from qkms.service import KeyManagementService
    from qkms.store.records import check_record_name

    body = {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": "signer\n", "namespace": "payments"},
            "spec": {"usage": "SIGNING", "owner": "o"}}
    with pytest.raises(InvalidInputError):
        parse_managed_key(body)
    with pytest.raises(InvalidInputError):
        KeyManagementService._check_name("payments/signer\n", "o", None, "key_dev_0")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        check_record_name("keys", "payments~signer\n")

"""qkms's own certificate files (QKMS_TLS=auto) live in a private folder that goes when the
data plane stops, and a folder an earlier, killed process left in the pod's /tmp (an
emptyDir, kept across container restarts) goes at the next start: no copy of the key
outlives its process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qkms.config import OperatorConfig
from qkms.k8s.dataplane import FOLDER_PREFIX, Serving, private_folder, tls_files


def _left(base: Path, pid: int, suffix: str = "abc") -> Path:
    folder = base / f"{FOLDER_PREFIX}{pid}-{suffix}"
    folder.mkdir(mode=0o700)
    (folder / "tls.key").write_bytes(b"key")
    return folder


def test_folders_of_dead_processes_and_of_an_earlier_run_go(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    of_dead = _left(tmp_path, int(dead.stdout))
    of_earlier_run = _left(tmp_path, os.getpid())  # pid 1 again after a container restart
    of_live = _left(tmp_path, os.getppid())
    unrelated = tmp_path / f"{FOLDER_PREFIX}notapid"
    unrelated.mkdir()

    made = private_folder(tmp_path)

    assert not of_dead.exists() and not of_earlier_run.exists()
    assert of_live.exists() and unrelated.exists()
    assert made.name.startswith(f"{FOLDER_PREFIX}{os.getpid()}-")
    assert made.stat().st_mode & 0o777 == 0o700


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-link"
    link.symlink_to(target)

    private_folder(tmp_path)

    assert link.is_symlink() and (target / "keep").exists()


class _Server:
    def __init__(self, fails: bool) -> None:
        self.fails, self.stopped = fails, False

    async def cleanup(self) -> None:
        self.stopped = True
        if self.fails:
            raise RuntimeError("stop failed")


@pytest.mark.parametrize("fails", [False, True])
async def test_stopping_the_data_plane_removes_its_folder(tmp_path: Path, fails: bool) -> None:
    folder = private_folder(tmp_path)
    (folder / "tls.key").write_bytes(b"key")
    server = _Server(fails)
    serving = Serving(server, folder)

    if fails:
        with pytest.raises(RuntimeError):
            await serving.cleanup()
    else:
        await serving.cleanup()

    assert server.stopped and not folder.exists()


async def test_files_given_to_qkms_have_no_folder_to_remove(tmp_path: Path) -> None:
    """cert-manager's files (QKMS_TLS_CERT/KEY) are used where they are, never removed; with
    QKMS_TLS=off there are none.  Neither needs the cluster (no runtime is touched)."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    given = OperatorConfig.from_env({"QKMS_TLS_CERT": str(cert), "QKMS_TLS_KEY": str(key)})
    off = OperatorConfig.from_env({"QKMS_API_LISTEN": "127.0.0.1:8443"})

    assert await tls_files(None, given) == ((cert, key, None), None)  # type: ignore[arg-type]
    assert await tls_files(None, off) == (None, None)  # type: ignore[arg-type]

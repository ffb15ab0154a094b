"""bin/kubectl-qkms builds the right kubectl commands.

A fake ``kubectl`` first on PATH records each argv (as JSON, one call per line), so the test
asserts the exact invocations without a cluster.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.install.helpers import ROOT

PLUGIN = ROOT / "bin" / "kubectl-qkms"
RESOURCE = "managedkeys.qkms.io"
ROTATE_ID = re.compile(r"qkms\.io/rotate-id=\d{8}T\d{6}Z-[0-9a-f]{12}")
COLUMNS = ("NAME:.metadata.name,ENV:.status.environment,ALGORITHM:.status.algorithm,"
           "PROVIDER:.status.provider,VERSION:.status.currentVersion,KEY-ID:.status.keyId,"
           "PHASE:.status.phase,READY:.status.conditions[?(@.type==\"Ready\")].status,"
           "VERSION-STATES:.status.versions[*].state,NEXT-ROTATION:.status.nextRotation,"
           "AUDIT-CID:.status.lastAuditCid")


class Kubectl:
    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "kubectl.log"
        fake = self.bin / "kubectl"
        fake.write_text(f"#!{sys.executable}\n"
                        "import json, os, sys\n"
                        "with open(os.environ['FAKE_KUBECTL_LOG'], 'a') as log:\n"
                        "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n")
        fake.chmod(0o755)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
               "FAKE_KUBECTL_LOG": str(self.log), "LC_ALL": "C"}
        return subprocess.run([str(PLUGIN), *args], env=env, capture_output=True, text=True,
                              timeout=30)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def call(self, *args: str) -> list[str]:
        """Run the plugin, expect success and exactly one kubectl call; return its argv."""
        before = len(self.calls())
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stderr
        calls = self.calls()[before:]
        assert len(calls) == 1, calls
        return calls[0]


@pytest.fixture
def kubectl(tmp_path: Path) -> Kubectl:
    return Kubectl(tmp_path)


def test_plugin_is_an_executable_posix_script() -> None:
    assert PLUGIN.stat().st_mode & stat.S_IXUSR, "chmod +x bin/kubectl-qkms"
    assert PLUGIN.read_text().startswith("#!/bin/sh\n")
    syntax = subprocess.run(["sh", "-n", str(PLUGIN)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def rotate_call(argv: list[str], *head: str, reason: str) -> None:
    assert argv[:-2] == list(head)
    assert argv[-2] == f"qkms.io/rotate={reason}"
    assert ROTATE_ID.fullmatch(argv[-1]), argv[-1]


def test_rotate(kubectl: Kubectl) -> None:
    rotate_call(kubectl.call("rotate", "signer"),
                "annotate", RESOURCE, "signer", "--overwrite", reason="MANUAL")
    rotate_call(kubectl.call("rotate", "signer", "-n", "payments"),
                "annotate", RESOURCE, "signer", "--overwrite", "--namespace", "payments",
                reason="MANUAL")
    rotate_call(kubectl.call("rotate", "--namespace=payments", "signer", "--emergency"),
                "annotate", RESOURCE, "signer", "--overwrite", "--namespace", "payments",
                reason="COMPROMISE")
    rotate_call(kubectl.call("rotate", "signer", "--reason", "migration"),
                "annotate", RESOURCE, "signer", "--overwrite", reason="MIGRATION")
    rotate_call(kubectl.call("rotate", "signer", "--emergency", "--reason=COMPROMISE"),
                "annotate", RESOURCE, "signer", "--overwrite", reason="COMPROMISE")


def test_each_rotation_request_has_its_own_id(kubectl: Kubectl) -> None:
    ids = {kubectl.call("rotate", "signer")[-1] for _ in range(3)}
    assert len(ids) == 3  # the operator runs each rotate-id once


def test_revoke(kubectl: Kubectl) -> None:
    argv = kubectl.call("revoke", "signer", "--reason", "key leaked in CI logs", "-n", "prod")
    assert argv == ["patch", RESOURCE, "signer", "--type", "merge", "-p",
                    '{"spec":{"revoked":{"reason":"key leaked in CI logs"}}}',
                    "--namespace", "prod"]
    # Quotes and backslashes stay valid JSON.
    argv = kubectl.call("revoke", "signer", '--reason=said "oops" \\o/')
    assert argv[:-1] == ["patch", RESOURCE, "signer", "--type", "merge", "-p"]
    assert json.loads(argv[-1]) == {"spec": {"revoked": {"reason": 'said "oops" \\o/'}}}


def test_status(kubectl: Kubectl) -> None:
    assert kubectl.call("status") == ["get", RESOURCE, "-o", f"custom-columns={COLUMNS}"]
    assert kubectl.call("status", "signer", "-n", "payments") == \
        ["get", RESOURCE, "signer", "--namespace", "payments", "-o", f"custom-columns={COLUMNS}"]
    assert kubectl.call("status", "-A") == \
        ["get", RESOURCE, "--all-namespaces", "-o",
         f"custom-columns=NAMESPACE:.metadata.namespace,{COLUMNS}"]


@pytest.mark.parametrize(("args", "message"), [
    ((), "Usage"),
    (("frobnicate",), "unknown command: frobnicate"),
    (("rotate",), "NAME is required"),
    (("rotate", "a", "b"), "one NAME only"),
    (("rotate", "signer", "-n"), "-n needs a value"),
    (("rotate", "signer", "--reason", "because"), "--reason must be MANUAL"),
    (("rotate", "signer", "--emergency", "--reason", "MANUAL"), "--emergency means"),
    (("rotate", "signer", "--force"), "unknown option --force"),
    (("revoke", "signer"), "--reason is required"),
    (("revoke", "signer", "--reason", "   "), "--reason is required"),
    (("revoke", "signer", "--reason", "two\nlines"), "single line"),
    (("status", "signer", "-A"), "-A lists every key"),
])
def test_bad_input_calls_nothing(kubectl: Kubectl, args: tuple[str, ...], message: str) -> None:
    proc = kubectl.run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert kubectl.calls() == []


def test_help(kubectl: Kubectl) -> None:
    proc = kubectl.run("help")
    assert proc.returncode == 0
    for command in ("rotate NAME", "revoke NAME --reason", "status [NAME]"):
        assert command in proc.stdout
    assert kubectl.calls() == []

"""What the review of issue 12 found, through the real ``qkms`` command: a one-off
``serve --once`` that did not do its job fails with one line; a command that cannot work
(a provider's SDK missing, no store for the environment) creates nothing; a kubeconfig
that is missing or broken is named."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli import test_first_hour
from tests.cli.test_first_hour import clean_failure, environ

qkms = test_first_hour.qkms  # the same fixture: `qkms ARGS` in an empty folder


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def test_serve_once_without_the_master_key_fails_once_and_creates_none(qkms) -> None:
    assert qkms("serve", "--once").returncode == 0
    data = qkms.cwd / ".qkms"
    (data / "master.key").rename(qkms.cwd / "kept.key")  # not where qkms looks for it
    before = files(data)
    proc = qkms("serve", "--once")
    text = clean_failure(proc)
    errors = [line for line in text.splitlines() if "error" in line]
    assert len(errors) == 1, text  # once, not once per key
    assert re.fullmatch(r"qkms: error: no master key at \.qkms/master\.key, but \.qkms/dev/store "
                        r"holds records sealed under KEK [0-9a-f]{16}: give it with "
                        r"--master-key-file; qkms will not create a new master key beside "
                        r"sealed records", errors[0]), errors[0]
    assert files(data) == before  # no new master key, nothing else either
    again = qkms("--master-key-file", "kept.key", "serve", "--once")
    assert again.returncode == 0, again.stderr.decode()


def test_serve_once_fails_when_its_keys_could_not_be_reconciled(qkms) -> None:
    (qkms.cwd / "a-file").write_text("not a folder\n")
    proc = qkms("serve", "--once", "--out", "a-file")  # no projection can be written
    clean_failure(proc, "5 of 5 ManagedKey(s) could not be reconciled")
    assert proc.stdout.decode().count("error: payments/") == 5


def test_a_provider_without_its_sdk_creates_nothing(qkms, tmp_path) -> None:
    blocker = tmp_path / "no-azure"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['azure'] = None\n")
    env = environ(tmp_path)
    env["PYTHONPATH"] = f"{blocker}:{env['PYTHONPATH']}"
    proc = qkms("--provider", "AZURE_KEY_VAULT", "keys", "create", "--usage", "SIGNING",
                "--algorithm", "Ed25519", "--owner", "o", env=env)
    clean_failure(proc, "AZURE_KEY_VAULT: azure-keyvault-keys is not installed",
                  "pip install 'qkms[azure]'")
    assert b"WARNING" not in proc.stderr and b"master key" not in proc.stderr
    assert files(qkms.cwd) == set()


def test_commands_for_an_environment_without_a_store_create_nothing(qkms) -> None:
    created = qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "Ed25519",
                   "--owner", "o", "--name", "k")
    assert created.returncode == 0, created.stderr.decode()
    before = files(qkms.cwd)
    for args in (["keys", "list"], ["keys", "show", "k"], ["keys", "public", "k"],
                 ["keys", "sign", "k", "--in", "-"], ["validate"], ["audit", "verify"],
                 ["audit", "search"], ["backup", "create", "--out", "b.json"]):
        proc = qkms("--environment", "staging", *args)
        assert proc.returncode in (1, 2), (args, proc.stdout.decode())
        text = proc.stderr.decode() + proc.stdout.decode()
        assert "Traceback" not in text, text
        assert ".qkms/staging" in text, (args, text)
    listed = clean_failure(qkms("--environment", "staging", "keys", "list"))
    assert "no store here yet (.qkms/staging): run `qkms serve` (with a KeyPolicy for " \
           "staging) or `qkms --environment staging keys create`" in listed
    assert files(qkms.cwd) == before  # no .qkms/staging, no backup key, no b.json
    assert json.loads(qkms("keys", "list").stdout)[0]["name"] == "k"  # dev is untouched


def test_a_missing_or_broken_kubeconfig_is_named(qkms, tmp_path) -> None:
    env = environ(tmp_path)
    missing = tmp_path / "gone" / "kubeconfig"
    env["KUBECONFIG"] = str(missing)
    for args in (["pqc", "status"], ["operator"]):
        clean_failure(qkms(*args, env=env), f"KUBECONFIG names {missing}, which does not exist")
    broken = tmp_path / "kubeconfig"
    broken.write_text("users:\n- name: u\n  user: {token: s3cret-t0ken\nclusters: [\n")
    env["KUBECONFIG"] = str(broken)
    for args in (["pqc", "status"], ["operator"]):
        text = clean_failure(qkms(*args, env=env), f"KUBECONFIG={broken} is not valid YAML")
        assert "s3cret" not in text  # a kubeconfig holds tokens: never echoed
    env.pop("KUBECONFIG")
    clean_failure(qkms("pqc", "status", env=env), "no KUBECONFIG, ~/.kube/config or "
                                                  "in-cluster account")

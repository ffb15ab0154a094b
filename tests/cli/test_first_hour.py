"""A newcomer's first hour, through the real ``qkms`` command (issue 12).

Every test runs ``qkms`` as a subprocess in a fresh folder, as a user does: one
data dir shared by ``serve`` and the other commands, errors as one
``qkms: error: ...`` line (never a traceback), metrics that agree with the
audit chain.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from qkms.cli import build_parser
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def command() -> list[str]:
    """The installed ``qkms`` script; ``python -m qkms`` where it is not on PATH."""
    script = shutil.which("qkms")
    return [script] if script else [sys.executable, "-m", "qkms"]


def environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QKMS_", "KMS_", "VAULT_", "AWS_", "AZURE_", "HSM_"))
           and k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "DEBUG")}
    env.update(PYTHONPATH=str(ROOT / "operator"), HOME=str(tmp_path / "home"),
               KUBECONFIG=str(tmp_path / "no-kubeconfig"), **extra)
    return env


@pytest.fixture
def qkms(tmp_path):
    """``qkms ARGS`` in an empty folder with no QKMS_* settings (the defaults a newcomer gets)."""
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*command(), *args], input=stdin, cwd=work, capture_output=True,
                              env=env or environ(tmp_path), timeout=timeout)
    run.cwd = work
    return run


def clean_failure(proc: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 1 or 2, no traceback, one ``qkms...: error:`` line naming what to do."""
    err = proc.stderr.decode()
    assert proc.returncode in (1, 2), (proc.returncode, err, proc.stdout.decode())
    assert "Traceback" not in err + proc.stdout.decode(), err
    lines = [line for line in err.splitlines() if line.strip()]
    text = err + proc.stdout.decode()
    assert any(re.match(r"qkms( audit)?: error: ", line) for line in lines) \
        or re.search(r"^FAIL ", proc.stdout.decode(), re.M), text  # validate: FAIL lines
    for part in expected:
        assert part in text, (part, text)
    return text


# -- 1. one data dir for serve and every other command ------------------------------------

def test_serve_then_the_cli_sees_the_same_keys_and_chain(qkms) -> None:
    served = qkms("serve", "--once")
    assert served.returncode == 0, served.stderr.decode()
    listed = json.loads(qkms("keys", "list").stdout)
    assert {k["name"] for k in listed} >= {"payments/user-service-signing",
                                           "payments/secure-service-kem"}
    verified = json.loads(qkms("audit", "verify", "--json").stdout)
    assert verified["ok"] and verified["entries"] >= 6
    validated = qkms("validate")
    out = validated.stdout.decode()
    assert validated.returncode == 0, out
    assert f"OK {verified['entries']} entries" in out and verified["head"] in out
    assert re.search(r"ok   store: \d+ keys readable in files under \.qkms/dev/store", out)
    # The CLI creates keys where serve reads them.
    qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "Ed25519", "--owner", "me",
         "--name", "mine")
    assert (qkms.cwd / ".qkms" / "dev" / "store" / "keys" / "mine.rec").is_file()
    assert not (qkms.cwd / ".qkms" / "store").exists()


def test_pointing_at_the_environment_folder_names_the_right_data_dir(qkms) -> None:
    assert qkms("serve", "--once").returncode == 0
    kek = (qkms.cwd / ".qkms" / "master.key").read_bytes()
    for args in (["keys", "list"], ["validate"],
                 ["keys", "create", "--usage", "SIGNING", "--algorithm", "Ed25519",
                  "--owner", "o"]):
        text = clean_failure(qkms("--data-dir", ".qkms/dev", *args), "--data-dir .qkms")
        assert "corrupt" not in text and "tampered" not in text
    assert not (qkms.cwd / ".qkms" / "dev" / "master.key").exists()  # no second master key
    assert (qkms.cwd / ".qkms" / "master.key").read_bytes() == kek
    assert json.loads(qkms("--environment", "dev", "keys", "list").stdout)


def test_a_wrong_master_key_is_named_not_called_tampering(qkms) -> None:
    assert qkms("serve", "--once").returncode == 0
    (qkms.cwd / "other.key").write_bytes(os.urandom(32))
    for args in (["keys", "list"], ["validate"], ["keys", "sign", "payments/release-signing"]):
        text = clean_failure(qkms("--master-key-file", "other.key", *args))
        assert re.search(r"this store \(\.qkms/dev/store\) was sealed under KEK [0-9a-f]{16}, "
                         r"found at \.qkms/master\.key; this command used other\.key", text), text
        assert "tampered" not in text


# -- 2. errors, never tracebacks --------------------------------------------------------

def _cases(port: int, busy: int) -> dict[str, list[list[str]]]:
    """Per subcommand, the ways it can fail that apply to it: a missing server, a missing
    file, a busy port, an empty folder."""
    unreachable = f"http://127.0.0.1:{port}"
    return {
        "call": [["call", "sign", "payments/k", "--url", unreachable],
                 ["call", "sign", "payments/k", "--in", "missing.bin"]],
        "operator": [["operator"]],
        "crds": [["crds", "--write", "a-file"]],
        "pqc status": [["pqc", "status"], ["pqc", "status", "--manifests", "missing"]],
        "serve": [["serve", "--listen", f"127.0.0.1:{busy}"],
                  ["serve", "--manifests", "missing"], ["serve", "--tokens", "missing.yaml"],
                  ["serve", "--tls-cert", "missing.pem", "--tls-key", "missing.pem"]],
        "audit verify": [["audit", "verify"], ["audit", "verify", "--car", "missing.car"]],
        "audit export": [["audit", "export", "--car", "out.car"]],
        "audit search": [["audit", "search"]],
        "audit report": [["audit", "report", "--standard", "soc2"]],
        "audit prune": [["audit", "prune"]],
        "validate": [["validate"], ["validate", "--manifests", "missing"]],
        "backup create": [["backup", "create", "--out", "b.json"]],
        "backup restore": [["backup", "restore", "--in", "missing.json"]],
        "keys create": [["keys", "create", "--usage", "SIGNING", "--algorithm", "Ed25519",
                         "--owner", "o", "--name", "k"]],  # run beside a store, see below
        "keys import": [["keys", "import", "--pem", "missing.pem", "--usage", "SIGNING",
                         "--owner", "o"]],
        "keys list": [["keys", "list"]],
        "keys show": [["keys", "show", "k"]],
        "keys public": [["keys", "public", "k"]],
        "keys rotate": [["keys", "rotate", "k"]],
        "keys revoke": [["keys", "revoke", "k", "--reason", "r"]],
        "keys delete": [["keys", "delete", "k"]],
        "keys cancel-deletion": [["keys", "cancel-deletion", "k"]],
        "keys sign": [["keys", "sign", "k", "--in", "missing.bin"], ["keys", "sign", "k"]],
        "keys verify": [["keys", "verify", "k", "--signature", "missing.sig"]],
        "keys encrypt": [["keys", "encrypt", "k", "--in", "missing.bin"],
                         ["keys", "encrypt", "k"]],
        "keys decrypt": [["keys", "decrypt", "k", "--in", "missing.txt"]],
        "keys encapsulate": [["keys", "encapsulate", "k", "--secret-out", "ss"]],
        "keys decapsulate": [["keys", "decapsulate", "k", "--in", "missing.ct"]],
        "keys derive": [["keys", "derive", "k", "--context", "c"]],
        "keys rewrap": [["keys", "rewrap"]],
        "providers": [["--provider", "NOPE", "providers"]],
        "demo": [["--data-dir", "a-file", "demo"]],
    }


NOTHING_TO_FAIL = {"version", "algorithms"}  # no server, file, port or folder involved


def subcommands() -> set[str]:
    names = set()
    top = next(a for a in build_parser()._actions if a.dest == "group")
    for name, parser in top.choices.items():
        subs = [a for a in parser._actions if isinstance(a, type(top))]
        names |= {f"{name} {s}" for s in subs[0].choices} if subs else {name}
    return names


def test_every_subcommand_fails_cleanly(qkms, tmp_path) -> None:
    """A missing server, file, busy port or empty folder: exit 1 or 2, one error line."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases = _cases(free_port(), busy.getsockname()[1])
        assert set(cases) | NOTHING_TO_FAIL == subcommands()
        (qkms.cwd / "a-file").write_text("not a folder\n")
        for name, runs in cases.items():
            for args in runs:
                if name == "keys create":
                    continue  # creating in an empty folder is its job; see the next test
                proc = qkms(*args)
                text = clean_failure(proc)
                if args[-1] == "missing" or any(a.startswith("missing") for a in args):
                    assert "missing" in text, (args, text)
        assert not (qkms.cwd / ".qkms" / "master.key").exists()  # nothing was created
        for name in sorted(NOTHING_TO_FAIL):
            proc = qkms(name)
            assert proc.returncode == 0 and b"Traceback" not in proc.stderr


def test_empty_folder_errors_say_what_to_run(qkms) -> None:
    for args in (["keys", "list"], ["keys", "sign", "k"], ["backup", "create"],
                 ["keys", "rewrap"]):
        clean_failure(qkms(*args), "no store here yet",
                      "run `qkms serve` or `qkms keys create`")
    first = qkms("validate").stdout.decode().splitlines()[0]
    assert "no store here yet" in first and "`qkms serve`" in first
    assert not first.startswith("FAIL master key")
    created = qkms("keys", "create", "--usage", "SIGNING", "--algorithm", "Ed25519",
                   "--owner", "o", "--name", "k")
    assert created.returncode == 0, created.stderr.decode()
    assert json.loads(qkms("keys", "list").stdout)[0]["name"] == "k"


def test_a_busy_port_fails_before_any_key_is_made(qkms) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = qkms("serve", "--listen", f"127.0.0.1:{port}")
    clean_failure(proc, f"port {port} is in use; use --listen")
    assert b"KeyCreated" not in proc.stdout
    assert not (qkms.cwd / ".qkms").exists()


def test_missing_extras_name_the_extra(qkms, tmp_path) -> None:
    """As after a plain ``pip install -e .``: no extra at all (no kopf, no kubernetes)."""
    blocker = tmp_path / "no-extras"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('kopf', 'kubernetes', 'uvloop', 'hvac', 'boto3', 'botocore',"
        " 'azure', 'pkcs11'):\n    sys.modules[name] = None\n")
    env = environ(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), env["PYTHONPATH"]])
    for args in (["operator"], ["pqc", "status"]):
        clean_failure(qkms(*args, env=env), "pip install 'qkms[operator]'")
    clean_failure(qkms("--provider", "HASHICORP_VAULT", "keys", "create", "--usage", "SIGNING",
                       "--algorithm", "Ed25519", "--owner", "o", env=env),
                  "pip install 'qkms[vault]'")
    listed = qkms("pqc", "status", "--manifests", str(EXAMPLES), env=env)
    assert listed.returncode == 0, listed.stderr.decode()  # the folder needs no extra
    served = qkms("serve", "--once", env=env)  # the README's first command needs none
    assert served.returncode == 0 and b"Traceback" not in served.stderr, served.stderr.decode()
    assert len(json.loads(qkms("keys", "list", env=env).stdout)) == 5


def test_pqc_status_without_a_cluster(qkms) -> None:
    clean_failure(qkms("pqc", "status"), "no Kubernetes cluster configured",
                  "--manifests DIR")


# -- 3. metrics that agree with the audit chain ------------------------------------------

def _get(url: str, token: str) -> bytes:
    """One GET on a new connection, so the kernel may give it to any worker."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
        return answer.read()


def _totals(metrics: str) -> tuple[float, dict[tuple[str, str], int]]:
    """``qkms_audit_events_total`` and the counts by (operation, result) of a scrape."""
    samples: Counter[tuple[str, str]] = Counter()
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("qkms_keys_created_total{"):
            samples[("CREATE", "success")] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("qkms_operations_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            samples[(labels["operation"], labels["result"])] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("qkms_audit_events_total "):
            total = float(line.rsplit(" ", 1)[1])
    return total, {k: int(v) for k, v in samples.items() if v}


def test_metrics_totals_equal_the_chains_entries_by_operation(qkms, tmp_path) -> None:
    """Two data-plane workers (the default is one per core) and the reconciler in the
    parent each write their own chain; every scrape, whichever worker answers it, counts
    the entries of them all, and so does the health detail."""
    port = free_port()
    (qkms.cwd / "tokens.yaml").write_text(
        "tokens:\n  - serviceAccount: payments/checkout\n    token: t0ken\n"
        "grants:\n  - serviceAccount: payments/checkout\n    namespace: payments\n"
        "    verbs: [sign, verify, metrics]\n")  # metrics: per-key metrics and health detail
    proc = subprocess.Popen([*command(), "serve", "--listen", f"127.0.0.1:{port}",
                             "--tokens", "tokens.yaml"], cwd=qkms.cwd,
                            env=environ(tmp_path, QKMS_DATA_PLANE_WORKERS="2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    audit = qkms.cwd / ".qkms" / "dev" / "audit"
    scrapes = []
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "data plane on" in line:
                break
        assert lines and "(2 worker processes)" in lines[-1], "".join(lines) + proc.stderr.read()
        url = f"http://127.0.0.1:{port}"
        env = environ(tmp_path, QKMS_TOKEN="t0ken", QKMS_URL=url)
        for _ in range(40):  # until both workers answered (each connection goes to one)
            assert qkms("call", "sign", "payments/user-service-signing", stdin=b"m",
                        env=env).returncode == 0
            if all(any((audit / w / "segments").glob("*.qlog")) for w in ("w1", "w2")):
                break
        clean_failure(qkms("call", "encrypt", "payments/storage-encryption", stdin=b"m",
                           env=env))  # not granted: a denied, audited attempt
        clean_failure(qkms("call", "sign", "payments/nope", stdin=b"m", env=env))
        chain = [json.loads(line) for line in qkms("audit", "search").stdout.splitlines()]
        deadline = time.monotonic() + 20  # deliveries follow each writer's group commit
        while _totals(_get(f"{url}/metrics/keys", "t0ken").decode())[0] != len(chain) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(8):
            scrapes.append((_get(f"{url}/metrics/keys", "t0ken").decode(),
                            json.loads(_get(f"{url}/health/keys", "t0ken"))))
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert {p.name for p in audit.iterdir() if (p / "segments").is_dir()} == {"w1", "w2"}
    by_operation = Counter((e["operation"], e["result"]) for e in chain)
    signs = by_operation[("SIGN", "success")]
    assert by_operation[("CREATE", "success")] >= 6 and signs >= 2  # parent's, workers'
    assert chain == [json.loads(line) for line in qkms("audit", "search").stdout.splitlines()]
    for metrics, health in scrapes:
        total, samples = _totals(metrics)
        audit_health = health["environments"]["dev"]["components"]["audit"]
        assert total == len(chain) == audit_health["entries"], (total, audit_health)
        assert samples == dict(by_operation), metrics
        assert {Path(c["folder"]).name for c in audit_health["chains"]} == {"audit", "w1", "w2"}


# -- 7. small things ---------------------------------------------------------------------

def test_help_serve_and_demo_say_each_thing_once(qkms, tmp_path) -> None:
    helped = qkms("--help").stdout.decode()
    assert "``" not in helped and "The qkms command" not in helped
    demo = qkms("demo")
    assert demo.returncode == 0 and b"health: healthy" in demo.stdout
    assert demo.stderr == b"", demo.stderr.decode()  # no master key to back up: it is gone
    port = free_port()
    proc = subprocess.Popen([*command(), "serve", "--listen", f"127.0.0.1:{port}"],
                            cwd=qkms.cwd, env=environ(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "data plane on" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    text = "".join(seen) + out
    assert text.count(f"127.0.0.1:{port}") == 1, text
    assert "Traceback" not in text and proc.returncode == 0

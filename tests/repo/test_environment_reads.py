"""qkms reads its environment in one place: ``config.py`` (issue 11).  Elsewhere only the
variables of other programs' conventions are read, each where that program needs it:
prometheus-client's multiprocess folder, the Kubernetes client's KUBECONFIG, and DEBUG for
the log level; and the worker supervisors (``qkms serve``'s, an operator replica's) forward
the environment whole to their children."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "qkms"
READ = re.compile(r"os\.environ\b|os\.getenv\b|getenv\(")
ALLOWED = {  # file: what its reading lines must name
    "server/metrics.py": ("MULTIPROC_ENV",),  # PROMETHEUS_MULTIPROC_DIR
    "cli/serve.py": ("PROMETHEUS_MULTIPROC_DIR", "metrics_folder(os.environ)"),
    "cli/cluster.py": ("KUBECONFIG",),
    "logs.py": ("DEBUG",),
    "server/workers.py": ("forwarded", "``os.environ``"),  # the children's, as given
    "k8s/dataplane.py": ("forwarded",),  # an operator's workers', as given
    "k8s/handlers.py": ("metrics_folder(os.environ)",),  # PROMETHEUS_MULTIPROC_DIR
}


def test_only_config_reads_qkms_variables() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name == "config.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if READ.search(line) and not any(mark in line for mark in ALLOWED.get(name, ())):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "read the environment in config.py:\n" + "\n".join(found)

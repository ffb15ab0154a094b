"""``qkms validate``: the seed's validation script, as a command.

One line per check (configuration, policy and key manifests, master key, store,
provider reachability and credentials, audit store); exit 1 if any fails.  It
reads and probes; it creates nothing except what the service itself would (a
missing master key is a failure here, not created).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from qkms.config import Settings
from qkms.errors import QkmsError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def check_kek(path: Path) -> Check:
    if not path.exists():
        return Check("master key", False, f"{path} does not exist (QKMS_MASTER_KEY_FILE)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check("master key", False, f"{path} is readable by others (mode {mode:o})")
    return Check("master key", True, f"{path} (mode {mode:o})")


def check_manifests(folder: Path) -> Check:
    from qkms.standalone import load_manifests

    found = load_manifests(folder)
    if found.errors:
        return Check("manifests", False, "; ".join(found.errors))
    return Check("manifests", True, f"{len(found.policies)} KeyPolicy, "
                                    f"{len(found.keys)} ManagedKey in {folder}")


async def run_checks(env: dict[str, str] | None = None, manifests: Path | None = None,
                     **overrides: object) -> list[Check]:
    checks: list[Check] = []
    try:
        settings = Settings.from_env(env if env is not None else dict(os.environ), **overrides)
    except QkmsError as exc:
        return [Check("configuration", False, exc.message)]
    checks.append(Check("configuration", True, f"environment {settings.environment.value}, "
                                               f"provider {settings.provider.value}"))
    if manifests is not None:
        checks.append(check_manifests(manifests))
    kek = check_kek(settings.kek_path)
    checks.append(kek)
    if not kek.ok:
        return checks
    from qkms.service import KeyManagementService

    try:
        service = KeyManagementService(settings)
    except (QkmsError, OSError) as exc:
        return [*checks, Check("store", False, str(exc))]
    corrupt = sorted(service.catalog.corrupt)
    checks.append(Check("store", not corrupt,
                        f"corrupt records: {', '.join(corrupt)}" if corrupt
                        else f"{len(service.catalog.all())} keys readable in "
                             f"{service.sealed.records.describe()}"))
    health = await service.health_check()
    for part in ("provider", "audit"):
        report = health["components"][part]
        detail = ", ".join(f"{k}={v}" for k, v in report.items() if k != "status")
        checks.append(Check(part, report["status"] != "unhealthy",
                            f"{report['status']} ({detail})"))
    return checks

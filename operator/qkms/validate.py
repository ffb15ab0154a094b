"""``qkms validate``: the seed's validation script, as a command.

One line per check (configuration, policy and key manifests, master key, store,
provider reachability and credentials, audit chain); exit 1 if any fails.  It
reads and probes the folder every command uses (``qkms.store.layout``); it
creates no master key, and in an empty folder its first line says what to run.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from qkms.config import Settings
from qkms.errors import QkmsError
from qkms.store.layout import check_kek, require_store


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def check_kek_file(path: Path) -> Check:
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
    """The checks of ``--environment``'s folder of the data dir, as every command uses it."""
    checks: list[Check] = []
    try:
        root = Settings.from_env(env, **overrides)
    except QkmsError as exc:
        return [Check("configuration", False, exc.message)]
    settings = root.scoped()
    store = settings.data_dir / "store"
    try:
        require_store(root.data_dir, settings.data_dir, settings.kek_path)
    except QkmsError as exc:  # an empty folder: say what to do first, then what can be checked
        checks.append(Check("store", False, exc.message))
    checks.append(Check("configuration", True, f"environment {settings.environment.value}, "
                                               f"provider {settings.provider.value}, "
                                               f"data dir {root.data_dir}"))
    if manifests is not None:
        checks.append(check_manifests(manifests))
    if checks[0].name == "store":
        return checks
    try:
        check_kek(settings.kek_path, store)
    except QkmsError as exc:
        return [*checks, Check("master key", False, exc.message)]
    kek = check_kek_file(settings.kek_path)
    checks.append(kek)
    if not kek.ok:
        return checks
    from qkms.service import KeyManagementService

    try:
        service = KeyManagementService(settings)
    except (QkmsError, OSError) as exc:
        return [*checks, Check("store", False, str(exc))]
    problems = service.store_problems()
    own = len(service.records()) - len(service.user_records())  # the checkpoint key
    checks.append(Check("store", not problems,
                        "; ".join(problems) if problems
                        else f"{len(service.user_records())} keys readable in "
                             f"{service.describe_store()}"
                             + (f" (and {own} of qkms's own)" if own else "")))
    stale = service.unresolved_intents()
    checks.append(Check("intents", not stale,
                        "unresolved (a crash or timeout mid-write; swept by `qkms serve` or "
                        f"the operator): {'; '.join(stale)}" if stale else "none open"))
    health = await service.health_check()
    report = health["components"]["provider"]
    detail = ", ".join(f"{k}={v}" for k, v in report.items() if k != "status")
    checks.append(Check("provider", report["status"] != "unhealthy",
                        f"{report['status']} ({detail})"))
    checks.append(check_audit(settings, keys=len(service.records())))
    return checks


def check_audit(settings: Settings, keys: int) -> Check:
    """The chain ``qkms audit verify`` checks, read and verified (never opened for writing,
    so a running ``qkms serve`` keeps it)."""
    from qkms.audit.verify import verify_folder
    from qkms.crypto import verify_signature
    from qkms.service import audit_folder

    if not settings.audit_enabled:
        return Check("audit", True, "disabled (AUDIT_ENABLED=false)")
    folder = audit_folder(settings.data_dir, settings.audit_writer)
    if not (folder / "segments").is_dir():
        return Check("audit", keys == 0, f"no audit log in {folder}"
                     + (f", but the store holds {keys} keys" if keys else " yet"))
    result = verify_folder(folder, check=verify_signature)
    return Check("audit", result.ok, f"{folder}: {result.summary()}")

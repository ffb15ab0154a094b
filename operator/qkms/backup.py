"""Encrypted backups of the embedded store: every key's catalog record and version chain,
and the material of software-held and envelope-held versions.

A backup is JSON with a cleartext header (format, time, environment, backup key ID) and
one AES-256-GCM ciphertext under the backup key, with the header as associated data, so
a header edit, a flipped bit or the wrong key is refused, never half-restored.
LOCAL_DEV material is carried unwrapped inside that ciphertext (the KEK may not survive
the disaster the backup is for); envelope material stays wrapped by its provider key,
so restoring it needs that provider; native, non-extractable keys are listed by
reference only, since their provider keeps them.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qkms.errors import IntegrityError, InvalidInputError
from qkms.model.keys import KeyRecord
from qkms.service import KeyManagementService
from qkms.store.kek import kek_id, load_or_create_kek

FORMAT = "qkms-backup/1"


def _header_bytes(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def backup_key(path: Path) -> bytes:
    """The backup key file (created 0600 if missing), kept apart from the master key."""
    return load_or_create_kek(path)


def create(service: KeyManagementService, key: bytes) -> dict[str, Any]:
    """Build the backup document for every key of the service's environment."""
    records, material = service.export_records()
    native = [{"key_id": version.key_id, "provider": version.provider.value,
               "ref": json.dumps(version.provider_ref, sort_keys=True)}
              for record in records for version in record.versions
              if version.key_id not in material and version.provider_ref.get("mode") == "native"]
    payload = {"keys": [json.loads(r.model_dump_json()) for r in records],
               "material": material, "native": native}
    header = {"format": FORMAT, "created": datetime.now(UTC).isoformat(),
              "environment": service.environment.value, "backup_key_id": kek_id(key).hex(),
              "keys": len(records), "versions": sum(len(r.versions) for r in records)}
    nonce = secrets.token_bytes(12)
    body = AESGCM(key).encrypt(nonce, json.dumps(payload).encode(), _header_bytes(header))
    return {**header, "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(body).decode()}


def open_backup(document: Any, key: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a backup; refuses anything edited, corrupt or under another key."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InvalidInputError("backup", f"not a {FORMAT} file")
    header = {k: v for k, v in document.items() if k not in ("nonce", "ciphertext")}
    if header.get("backup_key_id") != kek_id(key).hex():
        raise IntegrityError(f"Backup was made under backup key {header.get('backup_key_id')},"
                             f" not {kek_id(key).hex()}")
    try:
        nonce = base64.b64decode(document["nonce"], validate=True)
        body = base64.b64decode(document["ciphertext"], validate=True)
        plain = AESGCM(key).decrypt(nonce, body, _header_bytes(header))
    except (KeyError, ValueError, InvalidTag):
        raise IntegrityError("Backup is corrupt or was tampered with: authentication "
                             "failed") from None
    return header, json.loads(plain)


async def restore(service: KeyManagementService, document: Any, key: bytes) -> int:
    """Rebuild an empty store from a backup; returns how many keys were restored."""
    header, payload = open_backup(document, key)
    if header["environment"] != service.environment.value:
        raise InvalidInputError("backup", f"holds {header['environment']} keys, this store is "
                                          f"{service.environment.value}")
    if service.user_records():
        raise InvalidInputError("store", "restore needs an empty store; this one has keys")
    service.restore_records([KeyRecord.model_validate(raw) for raw in payload["keys"]],
                            payload["material"])
    await service.audit_store_event("RESTORE", service_actor(),
                                    {"keys": str(len(payload["keys"])),
                                     "created": header["created"]})
    return len(payload["keys"])


def service_actor() -> Any:
    from qkms.audit.entry import Actor

    return Actor(type="CLI", id="backup")


def backup_name(environment: str, moment: datetime) -> str:
    return f"qkms-{environment}-{moment.strftime('%Y%m%dT%H%M%SZ')}.json"


def expired_backups(names: list[str], environment: str, now: datetime,
                    retention: str) -> list[str]:
    """Which backups of ``environment`` are older than the retention period (pure)."""
    from qkms.model.durations import parse_duration

    cutoff = now - parse_duration(retention, "backupPolicy.retentionPeriod")
    prefix = f"qkms-{environment}-"
    old = []
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".json")):
            continue
        try:
            made = datetime.strptime(name[len(prefix):-5], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            continue
        if made < cutoff:
            old.append(name)
    return sorted(old)


async def scheduled(service: KeyManagementService, folder: Path, key: bytes,
                    retention: str) -> tuple[Path, list[str]]:
    """Write one backup into ``folder`` (a volume) and prune those past retention."""
    import asyncio

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = service.clock()
    path = folder / backup_name(service.environment.value, now)
    document = create(service, key)
    await asyncio.to_thread(path.write_text, json.dumps(document) + "\n")
    path.chmod(0o600)
    pruned = expired_backups([p.name for p in folder.iterdir()], service.environment.value,
                             now, retention)
    for name in pruned:
        (folder / name).unlink(missing_ok=True)
    return path, pruned

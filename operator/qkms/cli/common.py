"""What every command shares: the registry of commands, files or stdin/stdout in raw
or base64, JSON output, and the service over the data dir's layout."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from qkms.config import Settings
from qkms.errors import InvalidInputError

Handler = Callable[[argparse.Namespace], Any]


COMMANDS: dict[str, Handler] = {}


# Optional packages and the extra that installs each (pip install 'qkms[EXTRA]').
EXTRAS = {"kopf": "operator", "kubernetes": "operator", "hvac": "vault", "boto3": "aws",
          "botocore": "aws", "azure": "azure", "pkcs11": "hsm"}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        COMMANDS[name] = func
        return func
    return register


def read_input(path: str | None, encoding: str, field: str = "--in") -> bytes:
    raw = sys.stdin.buffer.read() if path in (None, "-") else _read_file(path, field)
    if encoding == "raw":
        return raw
    try:
        return base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            field, "is not valid base64 (use --encoding raw for bytes)") from None


def _read_file(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(field, f"cannot read {path}: {exc.strerror}") from None


def write_output(data: bytes | str, path: str | None, encoding: str) -> None:
    if isinstance(data, str):
        data = data.encode()
    elif encoding == "base64":
        data = base64.b64encode(data) + b"\n"
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(path).write_bytes(data)


def to_json(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json", exclude={"public_key"})
    elif is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    print(json.dumps(to_json(value), indent=2, default=str))


OPENED: list[Any] = []  # services a command opened: closed (final checkpoint) at its end


def service(args: argparse.Namespace, *, create: bool = False) -> Any:
    """The service of ``--environment``'s folder of the data dir; unless the command creates
    keys (``create``), an empty folder, or one without this environment's store, is an
    error that says what to run first, and nothing is created.  The provider's SDK is
    checked first: a missing one creates no master key or folder either."""
    from qkms.providers import provider_module
    from qkms.service import KeyManagementService
    from qkms.store.layout import require_store

    root = settings_from(args)
    settings = root.scoped()
    provider_module(settings.provider)
    if not create:
        require_store(root.data_dir, settings.data_dir, settings.kek_path)
    svc = KeyManagementService(settings)
    OPENED.append(svc)
    return svc


async def run_command(name: str, args: argparse.Namespace) -> None:
    try:
        await COMMANDS[name](args)
    finally:
        while OPENED:
            await OPENED.pop().close()


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        environment=args.environment, provider=args.provider, data_dir=args.data_dir,
        master_key_file=args.master_key_file,
    )

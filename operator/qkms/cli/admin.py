"""Looking after a data dir: backups, ``qkms validate``, providers and version."""

from __future__ import annotations

import argparse
import json
import sys

from qkms import __version__
from qkms.errors import InvalidInputError

from .common import (
    command,
    print_json,
    read_input,
    service,
    settings_from,
    write_output,
)


@command("backup create")
async def backup_create(args: argparse.Namespace) -> None:
    from qkms import backup

    svc = service(args)
    key = backup.backup_key(args.backup_key_file or settings_from(args).data_dir / "backup.key")
    document = backup.create(svc, key)
    write_output(json.dumps(document, indent=1) + "\n", args.out, "raw")
    print(f"backed up {document['keys']} keys ({document['versions']} versions)",
          file=sys.stderr)


@command("backup restore")
async def backup_restore(args: argparse.Namespace) -> None:
    from qkms import backup

    document_bytes = read_input(args.input, "raw")
    svc = service(args, create=True)
    key = backup.backup_key(args.backup_key_file or settings_from(args).data_dir / "backup.key")
    try:
        document = json.loads(document_bytes)
    except ValueError:
        raise InvalidInputError("--in", "not a JSON backup file") from None
    count = await backup.restore(svc, document, key)
    print_json({"restored": count})


@command("validate")
async def validate(args: argparse.Namespace) -> None:
    from qkms.validate import run_checks

    checks = await run_checks(manifests=args.manifests, environment=args.environment,
                              provider=args.provider, data_dir=args.data_dir,
                              master_key_file=args.master_key_file)
    for check in checks:
        print(check.line())
    if not all(check.ok for check in checks):
        raise SystemExit(1)


@command("providers")
async def providers(args: argparse.Namespace) -> None:
    from qkms.providers.capabilities import table

    rows = table()
    if args.provider:
        provider = settings_from(args).provider.value  # refuses an unknown name, listing all
        rows = [r for r in rows if r["provider"] == provider]
    width = max(len(r["algorithm"]) for r in rows)
    for row in rows:
        print(f"{row['provider']:<16} {row['algorithm']:<{width}}  {row['mode']}")


@command("version")
async def version(args: argparse.Namespace) -> None:
    print(f"qkms {__version__}")
